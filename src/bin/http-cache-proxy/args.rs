//! The command line: every flag also an environment variable (`HTTP_CACHE_PROXY_<FLAG>`),
//! sizes and durations written as operators write them for nginx (`10G`, `512M`, `30s`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::Uri;
use http_cache_streaming::CacheMode;

/// A caching reverse proxy: every request goes to one upstream through an RFC 9111 cache
/// on disk.
/// A caching reverse proxy in front of one origin: responses stored on disk by the rules of
/// RFC 9111, streamed to clients as they arrive.
#[derive(Parser, Debug)]
#[command(
    name = "http-cache-proxy",
    version,
    max_term_width = 100,
    args_override_self = true
)]
pub(crate) struct Args {
    /// The origin: http://HOST or https://HOST, with :PORT if need be.
    #[arg(long, env = "HTTP_CACHE_PROXY_UPSTREAM", value_parser = upstream)]
    pub(crate) upstream: Uri,

    /// Where clients connect.
    #[arg(long, env = "HTTP_CACHE_PROXY_LISTEN")]
    pub(crate) listen: SocketAddr,

    /// The cache directory (created if missing; it must be this user's).
    #[arg(long, env = "HTTP_CACHE_PROXY_CACHE_DIR")]
    pub(crate) cache_dir: PathBuf,

    /// Bytes the cache directory may hold: 10G, 512M, 64k, or bytes. The store also keeps
    /// 5 % of the file system (at most 1 GiB) free.
    #[arg(long, env = "HTTP_CACHE_PROXY_MAX_SIZE", value_parser = size, default_value = "10G")]
    pub(crate) max_size: u64,

    /// Entries the cache may hold. Unbounded by default.
    #[arg(long, env = "HTTP_CACHE_PROXY_MAX_ENTRIES", value_parser = count)]
    pub(crate) max_entries: Option<usize>,

    /// What goes first when the cache is full: s3-fifo (popular objects stay through scans
    /// of objects requested once) or lru (least recently used, as nginx).
    #[arg(long, env = "HTTP_CACHE_PROXY_EVICTION", value_enum, default_value_t = EvictionFlag::S3Fifo)]
    pub(crate) eviction: EvictionFlag,

    /// Store a response only once its URL has missed this many times (as nginx's
    /// proxy_cache_min_uses, 1 to 15): 2 spares the disk the writes of objects requested
    /// once.
    #[arg(long, env = "HTTP_CACHE_PROXY_MIN_USES", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=15))]
    pub(crate) min_uses: u8,

    /// Bytes of hot bodies kept in memory besides the disk (as Varnish's malloc storage, on
    /// top of the page cache): hits on them read nothing.
    #[arg(long, env = "HTTP_CACHE_PROXY_MEMORY_SIZE", value_parser = size, default_value = "32M")]
    pub(crate) memory_size: u64,

    /// The largest body kept in memory (see --memory-size).
    #[arg(long, env = "HTTP_CACHE_PROXY_MEMORY_MAX_BODY", value_parser = size, default_value = "64k")]
    pub(crate) memory_max_body: u64,

    /// Bodies written to the cache at once; past this, responses pass through unstored (a
    /// response is answered before its entry is committed: this bounds the writes, and the
    /// memory, that misses answered faster than the disk commits can queue).
    #[arg(long, env = "HTTP_CACHE_PROXY_MAX_WRITES_IN_FLIGHT", default_value_t = 1024, value_parser = count)]
    pub(crate) max_writes_in_flight: usize,

    /// Bodies larger than this are passed through unstored. Unbounded by default.
    #[arg(long, env = "HTTP_CACHE_PROXY_MAX_BODY_SIZE", value_parser = size)]
    pub(crate) max_body_size: Option<u64>,

    /// How the cache treats requests: default (RFC 9111), no-store, reload, no-cache,
    /// force-cache, only-if-cached, ignore-rules.
    #[arg(long, env = "HTTP_CACHE_PROXY_MODE", value_parser = mode, default_value = "default")]
    pub(crate) mode: CacheMode,

    /// Serve a stored response up to this stale when the upstream fails or answers 5xx
    /// (like nginx's proxy_cache_use_stale). Off by default.
    #[arg(long, env = "HTTP_CACHE_PROXY_STALE_ON_ERROR", value_parser = duration)]
    pub(crate) stale_on_error: Option<Duration>,

    /// No response is served from the cache once older than this, whatever its freshness.
    #[arg(long, env = "HTTP_CACHE_PROXY_MAX_TTL", value_parser = duration)]
    pub(crate) max_ttl: Option<Duration>,

    /// How long a response that gives no explicit freshness (no max-age, s-maxage or
    /// Expires) stays fresh, like nginx's proxy_cache_valid. Off by default: such responses
    /// are stored only with a validator, and revalidated on every use.
    #[arg(long, env = "HTTP_CACHE_PROXY_DEFAULT_TTL", value_parser = duration)]
    pub(crate) default_ttl: Option<Duration>,

    /// Every stored response stays fresh at least this long, whatever it says (but for
    /// no-cache and must-revalidate). Off by default.
    #[arg(long, env = "HTTP_CACHE_PROXY_MIN_TTL", value_parser = duration)]
    pub(crate) min_ttl: Option<Duration>,

    /// Store responses that set a cookie, without their Set-Cookie (which goes only to the
    /// client whose request fetched it). By default they pass through unstored.
    #[arg(long, env = "HTTP_CACHE_PROXY_STORE_SET_COOKIE")]
    pub(crate) store_set_cookie: bool,

    /// Store 400 and 5xx responses the upstream gives freshness, served for at most this
    /// long. By default they pass through unstored: an error one client provokes is never
    /// served to the next (cache-poisoned denial of service).
    #[arg(long, env = "HTTP_CACHE_PROXY_STORE_ERRORS", value_parser = duration)]
    pub(crate) store_errors: Option<Duration>,

    /// Request headers larger than this in all (names and values) are answered 431 here,
    /// never sent upstream: a request an origin would refuse with an error of its own.
    #[arg(long, env = "HTTP_CACHE_PROXY_MAX_REQUEST_HEADERS", value_parser = size, default_value = "16k")]
    pub(crate) max_request_headers: u64,

    /// How long a request for what another request is fetching waits for its response head
    /// before going to the upstream itself.
    #[arg(long, env = "HTTP_CACHE_PROXY_COALESCE_WAIT", value_parser = duration, default_value = "10s")]
    pub(crate) coalesce_wait: Duration,

    /// The name in the Cache-Status header (RFC 9211).
    #[arg(
        long,
        env = "HTTP_CACHE_PROXY_CACHE_STATUS",
        default_value = "http-cache-streaming"
    )]
    pub(crate) cache_status: String,

    /// Time the upstream has to answer, and the longest it may pause in a body.
    #[arg(long, env = "HTTP_CACHE_PROXY_UPSTREAM_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub(crate) upstream_timeout: Duration,

    /// A PEM file of CA certificates trusted for an https upstream, besides the system's.
    #[arg(long, env = "HTTP_CACHE_PROXY_UPSTREAM_CA")]
    pub(crate) upstream_ca: Option<PathBuf>,

    /// A PEM certificate chain: clients connect with TLS (HTTP/2 by ALPN). Needs --tls-key.
    #[arg(long, env = "HTTP_CACHE_PROXY_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "HTTP_CACHE_PROXY_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// Time a client has to send a request's headers (nginx's client_header_timeout), and a
    /// new connection its first request (TLS handshake included).
    #[arg(long, env = "HTTP_CACHE_PROXY_HEADER_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub(crate) header_timeout: Duration,

    /// A connection with nothing read or written for this long is closed, and so is one
    /// with no request in flight for this long (an HTTP/2 client sending only PINGs too).
    #[arg(long, env = "HTTP_CACHE_PROXY_IDLE_TIMEOUT", value_parser = duration, default_value = "75s")]
    pub(crate) idle_timeout: Duration,

    /// A client that takes no byte of a response for this long is dropped (nginx's
    /// send_timeout).
    #[arg(long, env = "HTTP_CACHE_PROXY_SEND_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub(crate) send_timeout: Duration,

    /// Client connections served at once; more wait in the listen backlog.
    #[arg(long, env = "HTTP_CACHE_PROXY_MAX_CONNECTIONS", value_parser = count, default_value = "4096")]
    pub(crate) max_connections: usize,

    /// Connections one client address (an IPv6 /64) may hold at once, on every listener;
    /// more are closed at once. Behind a load balancer every client has its address: raise
    /// this to --max-connections there.
    #[arg(long, env = "HTTP_CACHE_PROXY_MAX_CONNECTIONS_PER_CLIENT", value_parser = count, default_value = "256")]
    pub(crate) max_connections_per_client: usize,

    /// Fills whose clients left that are still read to their end, at once.
    #[arg(long, env = "HTTP_CACHE_PROXY_BACKGROUND_FILLS", value_parser = count, default_value = "8")]
    pub(crate) background_fills: usize,

    /// On SIGTERM or SIGINT, how long responses in flight may take to finish.
    #[arg(long, env = "HTTP_CACHE_PROXY_SHUTDOWN_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub(crate) shutdown_timeout: Duration,

    /// A bucket shared with other proxies behind the cache directory (AWS_* variables give
    /// credentials and region).
    #[arg(long, env = "HTTP_CACHE_PROXY_S3_BUCKET")]
    pub(crate) s3_bucket: Option<String>,

    /// An S3-compatible server instead of AWS, for --s3-bucket.
    #[arg(long, env = "HTTP_CACHE_PROXY_S3_ENDPOINT", requires = "s3_bucket")]
    pub(crate) s3_endpoint: Option<String>,

    /// How often the bucket's purge log is read, so that a purge on any proxy sharing
    /// --s3-bucket reaches this one; `off` keeps purges on the proxy they were sent to.
    #[arg(long, env = "HTTP_CACHE_PROXY_PURGE_LOG_EVERY", value_parser = duration_or_off, default_value = "500ms")]
    pub(crate) purge_log_every: Every,

    /// Invalidations by unsafe requests (a POST the upstream answers 2xx) written to the
    /// bucket's purge log for the whole fleet, at most, a second; past that, and for a URL
    /// invalidated within the second already, they remove this proxy's copy and the
    /// bucket's only. Purges always reach the fleet.
    #[arg(long, env = "HTTP_CACHE_PROXY_FLEET_INVALIDATION_RATE", value_parser = count, default_value = "100")]
    pub(crate) fleet_invalidation_rate: usize,

    /// How long purges stay in the bucket's purge log; a proxy down for longer drops what
    /// it stored before the oldest purge the log still holds.
    #[arg(long, env = "HTTP_CACHE_PROXY_PURGE_LOG_RETENTION", value_parser = duration, default_value = "24h")]
    pub(crate) purge_log_retention: Duration,

    /// Fleet fills: serve this proxy's fills to the others sharing --s3-bucket on this
    /// address (the fleet's own network), so that a new object is fetched from the upstream
    /// by one proxy of the fleet. Needs --fleet-secret.
    #[arg(long, env = "HTTP_CACHE_PROXY_FLEET_LISTEN", requires_all = ["s3_bucket", "fleet_secret"])]
    pub(crate) fleet_listen: Option<SocketAddr>,

    /// The URL other proxies reach --fleet-listen at (http://HOST:PORT); by default the
    /// address it is bound to.
    #[arg(
        long,
        env = "HTTP_CACHE_PROXY_FLEET_ADVERTISE",
        requires = "fleet_listen"
    )]
    pub(crate) fleet_advertise: Option<String>,

    /// The secret the fleet's proxies prove to each other (16 bytes or more; better from
    /// the environment than the command line, where `ps` shows it).
    #[arg(
        long,
        env = "HTTP_CACHE_PROXY_FLEET_SECRET",
        hide_env_values = true,
        requires = "fleet_listen"
    )]
    pub(crate) fleet_secret: Option<String>,

    /// How long a fleet lease holds when its holder dies without releasing it.
    #[arg(long, env = "HTTP_CACHE_PROXY_FLEET_LEASE_TTL", value_parser = duration, default_value = "30s")]
    pub(crate) fleet_lease_ttl: Duration,

    /// `PURGE /path` with `Authorization: Bearer TOKEN` removes what is stored for the path,
    /// and with `Surrogate-Key: TAG…` every entry carrying one of the tags (16 or more
    /// visible ASCII characters; better from the environment than the command line, where
    /// `ps` shows it).
    #[arg(long, env = "HTTP_CACHE_PROXY_PURGE_TOKEN", hide_env_values = true)]
    pub(crate) purge_token: Option<String>,

    /// A response field an entry's tags are read from (repeat for several; `none` for no
    /// tags). Each lists tags separated by spaces or commas.
    #[arg(long = "tag-field", value_name = "NAME", env = "HTTP_CACHE_PROXY_TAG_FIELDS", value_delimiter = ',', default_values = ["surrogate-key", "cache-tag"], value_parser = tag_field)]
    pub(crate) tag_fields: Vec<TagField>,

    /// Pass the tag fields on to clients (they are removed by default: they name how the
    /// origin groups its pages, which only the cache uses).
    #[arg(long, env = "HTTP_CACHE_PROXY_FORWARD_TAGS")]
    pub(crate) forward_tags: bool,

    /// Clients are proxies of your own: keep the Forwarded and X-Forwarded-* they send.
    #[arg(long, env = "HTTP_CACHE_PROXY_TRUST_FORWARDED")]
    pub(crate) trust_forwarded: bool,

    /// Serve /metrics (Prometheus), /stats (JSON) and /healthz here. Off by default.
    #[arg(long, env = "HTTP_CACHE_PROXY_ADMIN_LISTEN")]
    pub(crate) admin_listen: Option<SocketAddr>,

    /// Let --admin-listen be an address other than loopback.
    #[arg(long, env = "HTTP_CACHE_PROXY_ADMIN_ALLOW_REMOTE")]
    pub(crate) admin_allow_remote: bool,

    /// Log lines as text or as JSON objects. What is logged: RUST_LOG (default `info`).
    #[arg(long, env = "HTTP_CACHE_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    /// No access log line per response.
    #[arg(long, env = "HTTP_CACHE_PROXY_QUIET")]
    pub(crate) quiet: bool,
}

/// The eviction policy `--eviction` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EvictionFlag {
    #[value(name = "s3-fifo")]
    S3Fifo,
    Lru,
}

impl From<EvictionFlag> for http_cache_streaming::Eviction {
    fn from(flag: EvictionFlag) -> Self {
        match flag {
            EvictionFlag::S3Fifo => http_cache_streaming::Eviction::S3Fifo,
            EvictionFlag::Lru => http_cache_streaming::Eviction::Lru,
        }
    }
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

fn mode(value: &str) -> Result<CacheMode, String> {
    value.parse()
}

fn upstream(value: &str) -> Result<Uri, String> {
    let uri: Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    if !scheme_ok || uri.authority().is_none() || !bare {
        return Err("an http:// or https:// URL with a host and no path".into());
    }
    Ok(uri)
}

/// A size as nginx takes one: bytes, or a number with `k`, `m`, `g` or `t` (powers of
/// 1024; `KiB`, `MB` and the like read the same way).
pub(crate) fn size(value: &str) -> Result<u64, String> {
    let trimmed = value.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a size (10G, 512M, 64k, 1048576)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{value:?}: unknown unit {unit:?} (k, m, g, t)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{value:?} is too large"))
}

/// A duration as nginx takes one: `30s`, `500ms`, `5m`, `1h`, `1d`, several added up
/// (`1m30s`), or whole seconds. Zero is refused: it would mean "at once, always".
pub(crate) fn duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("{value:?} is not a duration (30s, 500ms, 5m, 1h, 1m30s)");
    let mut rest = value.trim();
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = rest.parse().map_err(|_| bad())?;
        return nonzero(Duration::from_secs(secs), value);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let millis = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let part = number.checked_mul(millis).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(bad)?;
        rest = tail.trim_start();
    }
    nonzero(total, value)
}

/// A period, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Every(pub(crate) Option<Duration>);

/// A [`duration`], or `off`.
pub(crate) fn duration_or_off(value: &str) -> Result<Every, String> {
    match value.trim() {
        "off" => Ok(Every(None)),
        _ => duration(value).map(|d| Every(Some(d))),
    }
}

/// A response field tags are read from; `None` for `none` (no tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagField(pub(crate) Option<http::HeaderName>);

/// A field name, or `none`.
fn tag_field(value: &str) -> Result<TagField, String> {
    let name = value.trim();
    if name == "none" {
        return Ok(TagField(None));
    }
    let name = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{value:?} is not a field name"))?;
    if !http_cache_streaming::may_be_tag_field(&name) {
        return Err(format!(
            "{name} means something else in HTTP: not a tag field"
        ));
    }
    Ok(TagField(Some(name)))
}

fn nonzero(duration: Duration, value: &str) -> Result<Duration, String> {
    if duration.is_zero() {
        return Err(format!("{value:?}: a duration above zero"));
    }
    Ok(duration)
}

/// A count above zero.
fn count(value: &str) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{value:?}: a whole number above zero"))
}

/// The fewest bytes a purge token or a fleet secret may have: a shorter one could be
/// guessed.
pub(crate) const SECRET_BYTES: usize = 16;

impl Args {
    /// Checks what clap cannot without printing it: the secrets. (A value parser's error
    /// would show the value it refused.)
    pub(crate) fn check_secrets(&self) -> Result<(), String> {
        if let Some(token) = &self.purge_token {
            token_error(token)
                .map_err(|why| format!("--purge-token (HTTP_CACHE_PROXY_PURGE_TOKEN): {why}"))?;
        }
        if let Some(secret) = &self.fleet_secret
            && secret.len() < SECRET_BYTES
        {
            return Err(format!(
                "--fleet-secret (HTTP_CACHE_PROXY_FLEET_SECRET): {SECRET_BYTES} bytes or more, \
                 so that it cannot be guessed"
            ));
        }
        Ok(())
    }
}

/// Why a purge token is refused, if it is: it must be visible ASCII (as an
/// `Authorization` header carries it) and long enough not to be guessed. The message never
/// holds the token.
fn token_error(token: &str) -> Result<(), String> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token of visible ASCII characters only".into());
    }
    if token.len() < SECRET_BYTES {
        return Err(format!(
            "{SECRET_BYTES} characters or more, so that it cannot be guessed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_nginx_writes_them() {
        assert_eq!(size("10G"), Ok(10 << 30));
        assert_eq!(size("512M"), Ok(512 << 20));
        assert_eq!(size("64k"), Ok(64 << 10));
        assert_eq!(size("2GiB"), Ok(2 << 30));
        assert_eq!(size("1048576"), Ok(1 << 20));
        assert!(size("10X").is_err());
        assert!(size("G").is_err());
        assert!(size("99999999999T").is_err());
    }

    #[test]
    fn durations_read_as_nginx_writes_them() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("45"), Ok(Duration::from_secs(45)));
        assert!(duration("0s").is_err());
        assert_eq!(duration_or_off("off"), Ok(Every(None)));
        assert_eq!(
            duration_or_off("250ms"),
            Ok(Every(Some(Duration::from_millis(250))))
        );
        assert!(duration("30x").is_err());
        assert!(duration("s").is_err());
    }
}

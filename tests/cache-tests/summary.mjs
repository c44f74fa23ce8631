// Reads the results of the HTTP working group's cache test suite (the JSON its command-line
// client prints) and judges them as the suite does: a required test that fails, after every
// test it depends on passed, is a failure. Prints the counts and each test that did not
// pass; exits 1 when a required test failed that is not named in ALLOWED.
//
//   node summary.mjs SUITE_DIR RESULTS.json
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

// Required tests the HTTP stack cannot pass, and why (README, "RFC 9111 behaviours").
const ALLOWED = {
  'interim-not-cached': 'hyper 1.x servers send no interim response but 100 Continue'
}

const [suiteDir, resultsFile] = process.argv.slice(2)
const index = pathToFileURL(path.resolve(suiteDir, 'tests', 'index.mjs'))
const suites = (await import(index)).default
const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'))

const tests = new Map()
for (const suite of suites) {
  for (const test of suite.tests) tests.set(test.id, test)
}

const passed = id => results[id] === true
function outcome (test) {
  const result = results[test.id]
  if (result === undefined) return 'untested'
  if ((test.depends_on || []).some(dep => !passed(dep))) return 'dependency failed'
  if (Array.isArray(result) && result[0] !== 'Assertion') return 'setup failed'
  const kind = test.kind || 'required'
  if (result === true) return kind === 'check' ? 'yes' : 'pass'
  return { required: 'FAIL', optimal: 'optional fail', check: 'no' }[kind]
}

const counts = {}
const failed = []
for (const test of tests.values()) {
  const judged = outcome(test)
  counts[judged] = (counts[judged] || 0) + 1
  if (!['pass', 'yes', 'no', 'untested'].includes(judged)) {
    const note = ALLOWED[test.id] && judged === 'FAIL' ? ` (allowed: ${ALLOWED[test.id]})` : ''
    console.log(`${judged}\t${test.id}\t${JSON.stringify(results[test.id])}${note}`)
  }
  if (judged === 'FAIL' && !ALLOWED[test.id]) failed.push(test.id)
}
console.log(JSON.stringify(counts))
if (failed.length > 0) {
  console.log(`required tests failed: ${failed.join(', ')}`)
  process.exit(1)
}

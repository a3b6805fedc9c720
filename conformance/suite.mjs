// Prints the test suite's tests as JSON, one object a test, as the suite's command-line client
// runs them (a reverse proxy: browser-only tests left out): id, suite, name, kind, depends_on.
// Usage: node suite.mjs <the http-cache-tests package directory>
import path from 'path'
import { pathToFileURL } from 'url'

const root = process.argv[2]
const load = async (file) => (await import(pathToFileURL(path.join(root, file)).href)).default
const suites = await load('tests/index.mjs')
suites.push(await load('tests/surrogate-control.mjs'))
const tests = []
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    tests.push({
      id: test.id,
      suite: suite.name,
      name: test.name,
      kind: test.kind || 'required',
      depends_on: test.depends_on || []
    })
  }
}
console.log(JSON.stringify(tests))

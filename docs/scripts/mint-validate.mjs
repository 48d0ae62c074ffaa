// The offline part of `mint validate`: Mintlify's own build step (`prebuild` of @mintlify/prebuild,
// the package `mint validate` runs) in strict mode, so every warning fails: docs.json against
// Mintlify's schema, every page in the navigation exists and parses as MDX, snippets resolve,
// the OpenAPI file parses and its operations become pages.
//
// `mint validate` itself first downloads Mintlify's web client ("requires an internet connection")
// and then runs exactly this in the client's folder; here the output goes to a temporary folder.
//
// usage: node scripts/mint-validate.mjs [SITE_DIR] [NAV_OUT]
// NAV_OUT: where to write the navigation Mintlify built (with the pages it generated from the
// OpenAPI file), for the tests to check.
import { prebuild } from '@mintlify/prebuild';
import { copyFileSync, mkdtempSync, rmSync } from 'fs';
import { tmpdir } from 'os';
import path from 'path';

const site = path.resolve(process.argv[2] || '.');
const navOut = process.argv[3] ? path.resolve(process.argv[3]) : null;
const out = mkdtempSync(path.join(tmpdir(), 'mint-validate-'));
process.chdir(out);
let code = 0;
try {
  await prebuild(site, { strict: true, skipStaticFiles: true });
  if (navOut) copyFileSync(path.join(out, 'src', '_props', 'docs.json'), navOut);
  console.log('build validation passed');
} catch (err) {
  console.error(err instanceof Error && err.message ? err.message : String(err));
  code = 1;
} finally {
  rmSync(out, { recursive: true, force: true });
}
process.exit(code);

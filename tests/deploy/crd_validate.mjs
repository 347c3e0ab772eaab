// Validates custom resources (prometheus-operator, cert-manager) against their CRD schemas, as
// shipped in the @kubernetes-models npm packages. Usage: node crd_validate.mjs <install dir>
// with a JSON list of resources on stdin; prints one line per problem and exits 1 if any.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const modules = {
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
  "cert-manager.io/v1": "@kubernetes-models/cert-manager/cert-manager.io/v1",
};
const base = process.argv[2];
const docs = JSON.parse(readFileSync(0, "utf8"));
let problems = 0;
for (const doc of docs) {
  const where = `${doc.kind}/${doc.metadata?.name}`;
  const module = modules[doc.apiVersion];
  if (!module) {
    console.log(`${where}: no schema for apiVersion ${doc.apiVersion}`);
    problems++;
    continue;
  }
  const url = pathToFileURL(`${base}/node_modules/${module}/${doc.kind}.js`).href;
  let Model;
  try {
    // The cert-manager package is CommonJS: its classes sit on the default export.
    const loaded = await import(url);
    Model = loaded[doc.kind] ?? loaded.default?.[doc.kind];
  } catch (error) {
    console.log(`${where}: no schema for kind ${doc.kind} (${error.code ?? error.message})`);
    problems++;
    continue;
  }
  if (typeof Model !== "function") {
    console.log(`${where}: no schema for kind ${doc.kind}`);
    problems++;
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (error) {
    console.log(`${where}: ${error.message}`);
    problems++;
  }
}
process.exit(problems ? 1 : 0);

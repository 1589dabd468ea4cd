// Runs exported TensorFlow.js LayersModels on float32 inputs in Node.js (convnet.web.node_predict).
//
//   node predict.mjs JOBS.json TFJS_PACKAGE_DIR
//
// JOBS.json is a list of {"model": DIR, "input": FILE, "shape": [N, ...], "logits": FILE,
// "probabilities": FILE}: each model.json in DIR (with its weight files) is loaded with
// tf.loadLayersModel, applied to the little-endian float32 inputs of FILE, and its logits and
// TF.js's softmax of them are written as little-endian float32 (N, K).
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const [jobsPath, tfjsDir] = process.argv.slice(2);
if (!jobsPath || !tfjsDir) {
  console.error('usage: node predict.mjs JOBS.json TFJS_PACKAGE_DIR');
  process.exit(2);
}
const warn = console.warn;
console.warn = () => {};  // tfjs's advice to install tfjs-node, printed once on import
const tf = createRequire(import.meta.url)(tfjsDir);
console.warn = warn;
await tf.setBackend('cpu');

function float32(buffer) {
  const copy = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
  return new Float32Array(copy);
}

async function loadModel(dir) {
  const modelJson = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
  const weightSpecs = [];
  const shards = [];
  for (const group of modelJson.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const file of group.paths) shards.push(fs.readFileSync(path.join(dir, file)));
  }
  const weights = Buffer.concat(shards);
  const weightData = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.length);
  const artifacts = { modelTopology: modelJson.modelTopology, weightSpecs, weightData };
  return tf.loadLayersModel(tf.io.fromMemory(artifacts));
}

try {
  for (const job of JSON.parse(fs.readFileSync(jobsPath, 'utf8'))) {
    const model = await loadModel(job.model);
    const x = tf.tensor(float32(fs.readFileSync(job.input)), job.shape, 'float32');
    const logits = model.predict(x, { batchSize: 256 });
    const probabilities = tf.softmax(logits);
    fs.writeFileSync(job.logits, Buffer.from((await logits.data()).buffer));
    fs.writeFileSync(job.probabilities, Buffer.from((await probabilities.data()).buffer));
    tf.dispose([x, logits, probabilities]);
    model.dispose();
  }
} catch (error) {
  console.error(error.stack);
  console.error(`${error.name}: ${error.message}`.split('\n').join(' '));  // the line reported
  process.exit(1);
}

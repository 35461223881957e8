// Run a TF.js Layers model with the real @tensorflow/tfjs from npm (pure-JS CPU backend) in Node.
//
//   node tfjs_predict.js MODEL_JSON PIXELS_BIN N OUT_JSON
//
// PIXELS_BIN: N x H x W x 3 float32 little-endian, already scaled to the model's input range, so
// only the model is compared with Keras. Writes {"probabilities": [[...], ...], "tfjs": version}.
// Also: node tfjs_predict.js --decode MODEL_JSON OUT_JSON   -> every weight as tfjs decodes it.
'use strict';
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

function artifacts(modelJson) {
  const model = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const dir = path.dirname(modelJson);
  const specs = [];
  const buffers = [];
  for (const group of model.weightsManifest) {
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
    specs.push(...group.weights);
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return {modelTopology: model.modelTopology, weightSpecs: specs, weightData};
}

async function main() {
  const args = process.argv.slice(2);
  await tf.setBackend('cpu');
  if (args[0] === '--decode') {
    const a = artifacts(args[1]);
    const decoded = tf.io.decodeWeights(a.weightData, a.weightSpecs);
    const out = {};
    for (const name of Object.keys(decoded)) out[name] = Array.from(decoded[name].dataSync());
    fs.writeFileSync(args[2], JSON.stringify(out));
    return;
  }
  const [modelJson, pixelsBin, n, outJson] = args;
  const model = await tf.loadLayersModel(tf.io.fromMemory(artifacts(modelJson)));
  const [, h, w, c] = model.inputs[0].shape;
  const raw = fs.readFileSync(pixelsBin);
  const pixels = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  const x = tf.tensor4d(pixels, [Number(n), h, w, c]);
  const y = model.predict(x, {batchSize: 8});
  const probabilities = await y.array();
  fs.writeFileSync(outJson, JSON.stringify({probabilities, tfjs: tf.version.tfjs}));
}

main().catch((err) => { console.error(err && err.stack || String(err)); process.exit(1); });

// The in-browser page of a `retreino export --format tfjs` folder: Teachable Machine's own library
// (tmImage.load + predict: center crop to 224x224, x/127 - 1) runs model.json here, offline.
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const status = $('status');
  let model = null;

  function fail(message) {
    status.textContent = message;
    status.className = 'error';
    document.body.dataset.state = 'failed';
  }

  async function load() {
    if (typeof tf === 'undefined' || typeof tmImage === 'undefined') {
      fail('Cannot run the model: tf.min.js or teachablemachine-image.min.js is missing beside this page ' +
           '(re-export with the npm packages installed; see retreino docs/export.md).');
      return;
    }
    try {
      model = await tmImage.load('model.json', 'metadata.json');
    } catch (err) {
      fail('Cannot load the model: ' + (err && err.message ? err.message : err));
      return;
    }
    window.retreinoModel = model; // for scripts and tests on this page
    const meta = model.getMetadata();
    $('model-name').textContent = meta.modelName || 'Image classifier';
    document.title = (meta.modelName || 'Image classifier') + ' (runs in your browser)';
    const list = $('classes');
    for (const label of model.getClassLabels()) {
      const li = document.createElement('li');
      li.textContent = label;
      list.appendChild(li);
    }
    status.textContent = 'Ready: ' + model.getClassLabels().length + ' classes, TensorFlow.js ' +
      tf.version.tfjs + ' (' + tf.getBackend() + ' backend).';
    document.body.dataset.state = 'ready';
  }

  function card(file) {
    const el = document.createElement('article');
    el.className = 'card';
    const name = document.createElement('div');
    name.className = 'file';
    name.textContent = file.name;
    el.appendChild(name);
    $('results').prepend(el);
    return el;
  }

  async function classify(file) {
    const el = card(file);
    const img = new Image();
    img.src = URL.createObjectURL(file);
    try {
      await img.decode();
    } catch (err) {
      el.classList.add('failed');
      const msg = document.createElement('div');
      msg.className = 'error';
      msg.textContent = file.name + ': not an image this browser can read';
      el.appendChild(msg);
      return;
    }
    el.prepend(img);
    const predictions = (await model.predict(img)).sort((a, b) => b.probability - a.probability);
    const best = predictions[0];
    const label = document.createElement('div');
    label.className = 'label';
    label.textContent = best.className;
    const confidence = document.createElement('div');
    confidence.className = 'confidence';
    confidence.textContent = (best.probability * 100).toFixed(1) + '%';
    el.append(label, confidence);
    for (const p of predictions) {
      const bar = document.createElement('div');
      bar.className = 'bar';
      const n = document.createElement('span');
      n.className = 'name';
      n.textContent = p.className;
      const fill = document.createElement('span');
      fill.className = 'fill';
      fill.style.width = (p.probability * 100).toFixed(1) + '%';
      const v = document.createElement('span');
      v.className = 'value';
      v.textContent = (p.probability * 100).toFixed(1) + '%';
      bar.append(n, fill, v);
      el.appendChild(bar);
    }
    el.dataset.probabilities = JSON.stringify(predictions.map((p) => [p.className, p.probability]));
    el.classList.add('done');
  }

  async function handle(files) {
    if (!model) return;
    for (const file of files) await classify(file);
  }

  $('file-input').addEventListener('change', (e) => { handle(Array.from(e.target.files)); e.target.value = ''; });
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    handle(Array.from(e.dataTransfer.files));
  });
  load();
})();

// The drawing page of `python -m convnet.export --page`: loads model.json with TensorFlow.js,
// classifies what is drawn on the canvas, and the test images in examples.json.
//
// A drawing becomes the model's input as the training images were made (see convnet/web.py):
// 28x28, pixels in [0, 1], white on black; digits fit in 20x20 with their centre of mass at the
// image's centre, garments fill 28x28 and are centred. The model runs on TF.js's CPU backend,
// in float32, as JAX does.
'use strict';

const SIZE = 28;
const convnet = { ready: false, error: null, lastInput: null, lastProbabilities: null };
window.convnet = convnet;

let model = null;
let examples = null;

function predict(images, count) {
  // images: Float32Array (count * 28 * 28); returns {classes, probabilities} as plain arrays.
  return tf.tidy(() => {
    const x = tf.tensor4d(images, [count, SIZE, SIZE, 1]);
    const probabilities = tf.softmax(model.predict(x, { batchSize: 256 }));
    return {
      classes: Array.from(probabilities.argMax(-1).dataSync()),
      probabilities: Array.from(probabilities.dataSync()),
    };
  });
}

// For tests and scripts: classifies `count` images given as base64 of little-endian float32.
convnet.classify = (base64, count) => {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return predict(new Float32Array(bytes.buffer), count);
};

function preprocess(canvas, kind) {
  // The drawing as a Float32Array (28 * 28) the model reads, or null when nothing is drawn.
  const { width, height } = canvas;
  const pixels = canvas.getContext('2d').getImageData(0, 0, width, height).data;
  let top = height, left = width, bottom = -1, right = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (pixels[(y * width + x) * 4] > 0) {
        top = Math.min(top, y); bottom = Math.max(bottom, y);
        left = Math.min(left, x); right = Math.max(right, x);
      }
    }
  }
  if (bottom < 0) return null;
  const w = right - left + 1, h = bottom - top + 1;
  const scale = (kind === 'digit' ? 20 : SIZE) / Math.max(w, h);
  const sw = Math.max(1, Math.round(w * scale)), sh = Math.max(1, Math.round(h * scale));
  const small = document.createElement('canvas');
  small.width = sw; small.height = sh;
  const context = small.getContext('2d');
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = 'high';
  context.drawImage(canvas, left, top, w, h, 0, 0, sw, sh);
  const scaled = context.getImageData(0, 0, sw, sh).data;
  const values = new Float32Array(sw * sh);
  let mass = 0, cx = 0, cy = 0;
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      const v = scaled[(y * sw + x) * 4] / 255;
      values[y * sw + x] = v; mass += v; cx += v * (x + 0.5); cy += v * (y + 0.5);
    }
  }
  let ox = (SIZE - sw) / 2, oy = (SIZE - sh) / 2;
  if (kind === 'digit' && mass > 0) { ox = SIZE / 2 - cx / mass; oy = SIZE / 2 - cy / mass; }
  ox = Math.min(Math.max(Math.round(ox), 0), SIZE - sw);
  oy = Math.min(Math.max(Math.round(oy), 0), SIZE - sh);
  const input = new Float32Array(SIZE * SIZE);
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) input[(y + oy) * SIZE + x + ox] = values[y * sw + x];
  }
  return input;
}

function drawImage(canvas, image) {
  const context = canvas.getContext('2d');
  const data = context.createImageData(SIZE, SIZE);
  for (let i = 0; i < SIZE * SIZE; i++) {
    const v = Math.round(Math.min(Math.max(image[i], 0), 1) * 255);
    data.data.set([v, v, v, 255], i * 4);
  }
  context.putImageData(data, 0, 0);
}

function showBars(probabilities) {
  const bars = document.getElementById('bars');
  const best = probabilities.indexOf(Math.max(...probabilities));
  bars.innerHTML = '';
  examples.class_names.forEach((name, k) => {
    const row = document.createElement('div');
    row.className = k === best ? 'bar top' : 'bar';
    const percent = (100 * probabilities[k]).toFixed(1);
    row.innerHTML = `<span></span><div class="track"><div class="fill"></div></div>
                     <span>${percent}%</span>`;
    row.firstChild.textContent = name;
    row.querySelector('.fill').style.width = `${percent}%`;
    bars.appendChild(row);
  });
}

function classifyDrawing() {
  const input = preprocess(document.getElementById('drawing'), examples.preprocessing);
  if (!input) return;
  drawImage(document.getElementById('input'), input);
  const { probabilities } = predict(input, 1);
  convnet.lastInput = Array.from(input);
  convnet.lastProbabilities = probabilities;
  showBars(probabilities);
}

function setUpDrawing() {
  const canvas = document.getElementById('drawing');
  const context = canvas.getContext('2d');
  const clear = () => {
    context.fillStyle = '#000';
    context.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  context.strokeStyle = '#fff';
  context.lineWidth = 20;
  context.lineCap = 'round';
  context.lineJoin = 'round';
  let drawing = false;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width,
            (event.clientY - box.top) * canvas.height / box.height];
  };
  canvas.addEventListener('pointerdown', (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    context.beginPath();
    context.moveTo(...point(event));
    context.lineTo(...point(event));
    context.stroke();
  });
  canvas.addEventListener('pointermove', (event) => {
    if (!drawing) return;
    context.lineTo(...point(event));
    context.stroke();
  });
  const end = () => { if (drawing) { drawing = false; classifyDrawing(); } };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);
  document.getElementById('clear').addEventListener('click', () => {
    clear();
    document.getElementById('bars').innerHTML = '';
    drawImage(document.getElementById('input'), new Float32Array(SIZE * SIZE));
  });
}

function showExamples() {
  const images = examples.images;
  const { classes } = predict(new Float32Array(images.flat()), images.length);
  const grid = document.getElementById('examples');
  images.forEach((image, i) => {
    const cell = document.createElement('div');
    const differs = classes[i] !== examples.jax_predictions[i];
    const wrong = classes[i] !== examples.labels[i];
    cell.className = differs ? 'example differs' : wrong ? 'example wrong' : 'example';
    const canvas = document.createElement('canvas');
    canvas.width = SIZE; canvas.height = SIZE;
    drawImage(canvas, image);
    const name = (k) => examples.class_names[k];
    const caption = document.createElement('div');
    caption.textContent = `${name(examples.labels[i])} → ${name(classes[i])} ` +
                          `(${name(examples.jax_predictions[i])})`;
    caption.title = `label ${name(examples.labels[i])}, this page ${name(classes[i])}, ` +
                    `JAX ${name(examples.jax_predictions[i])}`;
    cell.append(canvas, caption);
    grid.appendChild(cell);
  });
  convnet.examplePredictions = classes;
}

async function start() {
  try {
    if (typeof tf === 'undefined') {
      throw new Error('TF.js did not load: tf.min.js is missing beside the page, or it is ' +
                      'loaded from jsDelivr and this browser is offline');
    }
    await tf.setBackend('cpu');
    examples = await (await fetch('examples.json')).json();
    model = await tf.loadLayersModel('model.json');
    setUpDrawing();
    showExamples();
    document.getElementById('status').textContent =
      `Model of ${examples.dataset} loaded (TF.js ${tf.version.tfjs}, ${tf.getBackend()} ` +
      `backend). Draw a ${examples.preprocessing} in the black square, filling most of it.`;
    convnet.ready = true;
  } catch (error) {
    convnet.error = String(error);
    const served = location.protocol === 'file:' ?
      ' Browsers do not let a page opened as a file read its model: serve the folder, ' +
      '`python -m http.server --directory FOLDER 8000`, and open http://localhost:8000.' : '';
    document.getElementById('status').textContent = `Could not load the model: ${error}.${served}`;
  }
}

start();

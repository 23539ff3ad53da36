// The page: a bench on load, then the MLP example trained in f32 and in bf16 with compact
// state side by side. Results also go to <pre id="results"> as JSON and the body's
// data-state ends "done" (or "error"), for tests/page.mjs.
import init, { adapter, rules, bench, train } from './pkg/web.js';

const $ = (id) => document.getElementById(id);
const results = { adapter: null, first_result_ms: null, bench: [], train: [] };
const show = () => { $('results').textContent = JSON.stringify(results, null, 2); };
// What the train button runs: the CLI's default and the compact formats it offers.
// The compact run is dashed on top: the two curves nearly coincide.
const RUNS = [
  { precision: 'f32', color: '#1f5fbf', width: 4, dash: [] },
  { precision: 'bf16,master=remainder,state=8bit', color: '#d9661f', width: 2, dash: [6, 4] },
];

// One GPU job at a time, so that no timing overlaps another job.
let busy = false;
async function exclusive(job) {
  if (busy) return;
  busy = true;
  $('run').disabled = $('train-button').disabled = true;
  try {
    await job();
  } finally {
    busy = false;
    $('run').disabled = $('train-button').disabled = false;
  }
}

function fail(error) {
  document.body.dataset.state = 'error';
  $('error').hidden = false;
  $('error').textContent = String(error?.stack ?? error);
  results.error = String(error);
  show();
}

function row(table, cells) {
  const tr = document.createElement('tr');
  for (const cell of cells) {
    const td = document.createElement('td');
    td.textContent = cell;
    tr.append(td);
  }
  $(table).tBodies[0].append(tr);
  return tr;
}

async function runBench(rule, size, precision, steps) {
  const r = await bench(rule, size, precision, steps);
  results.bench.push(r);
  results.first_result_ms ??= performance.now();
  row('bench', [r.rule, r.precision, r.params.toLocaleString('en'), r.ms_per_step.toFixed(2),
    r.bytes_per_param.toFixed(2), r.gb_per_s.toFixed(2), r.floor_gb_per_s.toFixed(2),
    r.floor_ratio.toFixed(2), r.format_floor_ratio.toFixed(2)]);
  show();
}

// The loss chart: one line per run, redrawn as each epoch's loss arrives.
const series = [];
let chartEpochs = 2;
function draw() {
  const canvas = $('loss');
  const g = canvas.getContext('2d');
  const [w, h] = [canvas.width, canvas.height];
  const [left, right, top, bottom] = [52, 16, 14, 36];
  g.fillStyle = '#fff';
  g.fillRect(0, 0, w, h);
  const losses = series.flatMap((s) => s.losses).filter(Number.isFinite);
  const lo = losses.length ? Math.floor(Math.min(...losses) * 10) / 10 : 0;
  const hi = losses.length ? Math.ceil(Math.max(...losses) * 10) / 10 : 1;
  const span = Math.max(hi - lo, 0.1);
  const x = (epoch) => left + (w - left - right) * epoch / Math.max(chartEpochs - 1, 1);
  const y = (loss) => h - bottom - (h - top - bottom) * (loss - lo) / span;
  g.strokeStyle = '#ccc';
  g.fillStyle = '#555';
  g.font = '11px sans-serif';
  g.lineWidth = 1;
  g.textAlign = 'right';
  for (let i = 0; i <= 4; i++) {
    const loss = lo + span * i / 4;
    g.beginPath(); g.moveTo(left, y(loss)); g.lineTo(w - right, y(loss)); g.stroke();
    g.fillText(loss.toFixed(2), left - 6, y(loss) + 4);
  }
  g.textAlign = 'center';
  const every = Math.ceil(chartEpochs / 10);
  for (let e = 0; e < chartEpochs; e += every) g.fillText(String(e + 1), x(e), h - bottom + 16);
  g.fillText('epoch', (left + w - right) / 2, h - 4);
  g.save();
  g.translate(12, (top + h - bottom) / 2);
  g.rotate(-Math.PI / 2);
  g.fillText('training loss', 0, 0);
  g.restore();
  g.textAlign = 'left';
  series.forEach((s, i) => {
    g.strokeStyle = g.fillStyle = s.color;
    g.lineWidth = s.width;
    g.setLineDash(s.dash);
    g.beginPath();
    s.losses.forEach((loss, e) => (e ? g.lineTo(x(e), y(loss)) : g.moveTo(x(e), y(loss))));
    g.stroke();
    g.beginPath();
    g.moveTo(w - right - 260, top + 7 + 16 * i);
    g.lineTo(w - right - 236, top + 7 + 16 * i);
    g.stroke();
    g.setLineDash([]);
    g.fillStyle = '#222';
    g.fillText(s.precision, w - right - 230, top + 11 + 16 * i);
  });
}

async function runTrain(optimizer, epochs) {
  series.length = 0;
  chartEpochs = epochs;
  $('train').tBodies[0].replaceChildren();
  const runs = RUNS.map(async ({ precision, color, width, dash }) => {
    const s = { precision, color, width, dash, losses: [] };
    series.push(s);
    const r = await train(optimizer, precision, epochs, (epoch, loss) => {
      s.losses[epoch] = loss;
      draw();
    });
    const last = r.gpu_loss.length - 1;
    row('train', [r.precision, r.gpu_loss.length, r.gpu_loss[0].toFixed(4),
      r.gpu_loss[last].toFixed(4), `${(100 * r.gpu_accuracy).toFixed(1)}%`,
      r.gpu_test_loss.toFixed(4), r.cpu_test_loss.toFixed(4), (r.ms / 1000).toFixed(1)]);
    return r;
  });
  draw();
  results.train = await Promise.all(runs);
  show();
}

async function main() {
  await init();
  const a = await adapter();
  // wgpu has no name for the browser's adapter; WebGPU's own info names the vendor at least.
  const info = (await navigator.gpu.requestAdapter())?.info;
  a.browser = info ? `${info.vendor} ${info.architecture} ${info.description}`.trim() : '';
  results.adapter = a;
  $('adapter').textContent = `Adapter: ${a.name || a.browser || '(unnamed)'}, ${a.backend}, ` +
    `${a.device_type}` +
    `; timestamp queries: ${a.timestamp_query ? 'yes' : 'no'}; immediates: ` +
    `${a.immediates ? 'yes' : 'no (per-dispatch values go through a uniform)'}`;
  for (const select of [$('rule'), $('optimizer')]) {
    for (const name of rules()) select.add(new Option(name, name, false, name === 'adam'));
  }
  $('bench-form').onsubmit = (event) => {
    event.preventDefault();
    exclusive(() => runBench($('rule').value, Number($('size').value), $('precision').value,
      Number($('steps').value))).catch(fail);
  };
  $('train-form').onsubmit = (event) => {
    event.preventDefault();
    exclusive(() => runTrain($('optimizer').value, Number($('epochs').value))).catch(fail);
  };
  show();
  // The defaults: small enough that the first result comes within seconds on a CPU adapter.
  document.body.dataset.state = 'bench';
  await exclusive(async () => {
    for (const precision of RUNS.map((run) => run.precision)) {
      await runBench('adam', Number($('size').value), precision, Number($('steps').value));
    }
  });
  document.body.dataset.state = 'train';
  await exclusive(() => runTrain('adam', Number($('epochs').value)));
  document.body.dataset.state = 'done';
}

main().catch(fail);

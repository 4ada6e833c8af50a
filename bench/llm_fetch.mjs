// llm_fetch.mjs: the Node.js peer of bench/llm_bench.c. The same fan-out
// (N chat completions, C in flight, JSON built and parsed, usage read)
// with Node's built-in fetch against the same mock; prints one JSON line
// with the same fields. Usage: node llm_fetch.mjs BASE_URL N C LATENCY_MS
const [base, nArg, cArg, latArg] = process.argv.slice(2);
const N = Number(nArg), C = Number(cArg), LAT = Number(latArg);
const url = `${base}/v1/chat/completions`;
const body = JSON.stringify({
  model: `bench+fault=latency=${LAT}`,
  max_tokens: 1024,
  messages: [{ role: "user", content: "benchmark request" }],
});

const rss0 = process.memoryUsage().rss;
let peak = rss0;
const sampler = setInterval(() => {
  const r = process.memoryUsage().rss;
  if (r > peak) peak = r;
}, 5);

const lat = new Float64Array(N);
const ends = new Float64Array(N); // completion times since the start, in order
let started = 0, done = 0, failed = 0, firstError = null;

async function worker() {
  while (started < N) {
    started++;
    const t0 = performance.now();
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body,
      });
      const j = await res.json();
      if (!res.ok || !j.choices?.[0]?.message) throw new Error(`HTTP ${res.status}`);
      void j.usage?.prompt_tokens;
    } catch (e) {
      if (!failed++) firstError = String(e?.cause ?? e);
    }
    const t1 = performance.now();
    ends[done] = t1 - tStart;
    lat[done++] = t1 - t0;
  }
}

const tStart = performance.now();
const t0 = tStart;
const cpu0 = process.cpuUsage();
await Promise.all(Array.from({ length: Math.min(C, N) }, worker));
const wall = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
clearInterval(sampler);
const maxrss = process.resourceUsage().maxRSS * 1024; // bytes
if (maxrss > peak) peak = maxrss;
lat.sort();
const tput = N / wall, ideal = C / (LAT / 1000);
// steady state: the completion rate between the 10th and 90th percentile
const i10 = Math.floor(N / 10), i90 = Math.floor((N * 9) / 10);
const steady = ends[i90] > ends[i10] ? (i90 - i10) / ((ends[i90] - ends[i10]) / 1000) : 0;
const out = {
  client: `node ${process.version} fetch`,
  requests: N, concurrency: C, latency_ms: LAT, failed,
  wall_s: +wall.toFixed(3), throughput: Math.round(tput), ideal: Math.round(ideal),
  ratio: +(tput / ideal).toFixed(3),
  steady_ratio: +(steady / ideal).toFixed(3),
  added_p50_ms: +(lat[Math.floor(N / 2)] - LAT).toFixed(3),
  added_p99_ms: +(lat[Math.floor(N * 0.99)] - LAT).toFixed(3),
  rss_base_kib: Math.round(rss0 / 1024), rss_peak_kib: Math.round(peak / 1024),
  kib_per_inflight: +((peak - rss0) / 1024 / Math.min(C, N)).toFixed(1),
  cpu_us_per_req: +((cpu.user + cpu.system) / N).toFixed(1),
};
if (firstError) out.first_error = firstError;
console.log(JSON.stringify(out));
process.exit(failed ? 1 : 0);

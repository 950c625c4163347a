import { pickGenerator, runLoad, type LoadResult } from './lib/load.js';
import { scrapeMetric, startHello, startNodeWithAccounts, startOurNode, startRedis, sumSamples, treeCpuMicros, type RedisProcess, type Target } from './lib/processes.js';
import { median, reportMarkdown, table, writeResult, type Row } from './lib/report.js';

export interface ThroughputOptions {
  durationSeconds: number;
  warmupSeconds: number;
  connections: number;
  rounds: number;
  users: number;
  /** Only targets whose name contains this (plus what they are compared with). */
  only?: string;
}

interface TargetSpec {
  name: string;
  start(): Promise<Target>;
  /** Name of the target this one is compared with (default: the ceiling, the first). */
  versus?: string;
  /** The ratio this target must reach against `versus`. */
  bar?: number;
  /** Sampled every 250 ms while the target is under load (e.g. the sync lag). */
  probe?: { label: string; read(target: Target): Promise<number> };
  /**
   * Seconds per round at least: a target whose costs come once a minute (usage rows are
   * written after their minute ends) is loaded long enough for each window to pay for them.
   */
  minSeconds?: number;
  /** Read once after the last round, printed under the table. */
  report?: (target: Target) => Promise<string>;
  /**
   * Start each loaded window (and the warm-up) at a set point of the wall-clock minute,
   * for a target whose costs follow the minute (see the usage analytics spec).
   */
  minuteAligned?: boolean;
}

const CEILING = 'fastify hello-world, 1 process';
const CEILING_2 = 'fastify hello-world, 2 workers';
const SAME_BYTES = "fastify hello-world answering a check's bytes";
const SAME_BYTES_2 = "fastify hello-world answering a check's bytes, 2 workers";
const LOCAL = 'check, local mode, no Redis';
const LOCAL_REDIS = 'check, local mode + Redis write-behind (no usage recording)';
const REDIS_MODE = 'check, redis mode (Redis per decision)';
const NODE_2 = 'check, one node of 2 workers (ring of 2)';
const BY_USER = 'check by user_id, 1000 stored users';
const BY_KEY = 'check by api_key, 1000 keys';
const STORED_USERS = 1000;
const ANALYTICS_OFF = 'check, usage analytics off';
const ANALYTICS_ON = 'check, usage analytics on (recording every decision)';
/** Round length of the usage analytics pair and of write-behind, compared with its off side (see their specs). */
const USAGE_WINDOW_SECONDS = 60;

/** Forwarded share and batch sizes of a node, from its aggregated /metrics. */
async function forwardingReport(target: Target): Promise<string> {
  const text = await (await fetch(`${target.url}/metrics`)).text();
  const local = sumSamples(text, 'rate_limiting_decisions_total', 'path="local"');
  const forwarded = sumSamples(text, 'rate_limiting_decisions_total', 'path="forwarded"');
  const buckets = [...text.matchAll(/^rate_limiting_forward_batch_size_bucket\{le="([^"]+)"\} (\d+)/gm)].map((m) => [m[1]!, Number(m[2])] as const);
  let previous = 0;
  const distribution = buckets
    .map(([le, cumulative]) => {
      const share = cumulative - previous;
      previous = cumulative;
      return share > 0 ? `≤${le}: ${share}` : '';
    })
    .filter(Boolean)
    .join(', ');
  const batches = Number(/^rate_limiting_forward_batch_size_count (\d+)/m.exec(text)?.[1] ?? 0);
  const total = local + forwarded;
  return (
    `${NODE_2}: ${total} decisions, ${((100 * forwarded) / Math.max(1, total)).toFixed(1)} % forwarded to the sibling worker ` +
    `in ${batches} batches (mean ${(forwarded / Math.max(1, batches)).toFixed(1)} checks); batch sizes ${distribution}`
  );
}

/** Waits until the wall clock's second of the minute is in [from, to). */
async function untilSecondOfMinute(from: number, to: number): Promise<void> {
  const second = () => (Date.now() % 60_000) / 1000;
  while (second() < from || second() >= to) {
    const wait = (from - second() + 60) % 60;
    await new Promise((resolve) => setTimeout(resolve, Math.max(50, Math.min(wait * 1000, 1000))));
  }
}

/** The targets of one run; the first is the ceiling. */
function targets(redis: RedisProcess): TargetSpec[] {
  const node = (name: string, env: Record<string, string> = {}) => () => startOurNode(name, { RATE_LIMITING_WORKERS: '1', ...env });
  // A probe scrapes the node's /metrics 4 times a second (a few ms of CPU each), so both
  // sides of a comparison with a bar are probed alike.
  const syncLag = { label: 'sync lag ms (max)', read: async (t: Target) => 1000 * (await scrapeMetric(t, 'rate_limiting_sync_lag_seconds')) };
  const usageRows = { label: 'usage rows buffered (max)', read: (t: Target) => scrapeMetric(t, 'rate_limiting_usage_buffered_rows') };
  return [
    { name: CEILING, start: () => startHello(1) },
    { name: CEILING_2, start: () => startHello(2) },
    // What serving the check's response costs without deciding anything: the headroom left
    // for any limiter that answers the contracted body and headers.
    { name: SAME_BYTES, start: () => startHello(1, true) },
    // The same for the 2-worker node: what the contracted answer alone leaves of the
    // 2-worker hello-world, before anything is decided or forwarded.
    { name: SAME_BYTES_2, start: () => startHello(2, true), versus: CEILING_2 },
    { name: LOCAL, start: node(LOCAL), bar: 0.85, probe: syncLag },
    // Compared with the same node without Redis. Usage analytics is off on both sides: each
    // node's usage writes (about half a second of PGlite CPU a minute for 10 000 users)
    // would otherwise land in one side's window or the other's, round by round. Its
    // windows are as long as its reference's: what a node does at intervals (re-reading
    // the users it does not store) must fall in both sides' windows alike, or it would
    // flatter the shorter side.
    {
      name: LOCAL_REDIS,
      start: node(LOCAL_REDIS, { REDIS_ENDPOINT: redis.endpoint, USAGE_ANALYTICS_ENABLED: 'false' }),
      versus: ANALYTICS_OFF,
      bar: 0.95,
      probe: syncLag,
      minSeconds: USAGE_WINDOW_SECONDS,
    },
    { name: REDIS_MODE, start: node(REDIS_MODE, { REDIS_ENDPOINT: redis.endpoint, REDIS_DATABASE: '1', RATE_LIMITING_MODE: 'redis' }), versus: LOCAL },
    { name: BY_USER, start: () => startNodeWithAccounts(BY_USER, STORED_USERS, 'user_id', { RATE_LIMITING_WORKERS: '1' }) },
    { name: BY_KEY, start: () => startNodeWithAccounts(BY_KEY, STORED_USERS, 'api_key', { RATE_LIMITING_WORKERS: '1' }), versus: BY_USER, bar: 0.9 },
    { name: ANALYTICS_OFF, start: node(ANALYTICS_OFF, { USAGE_ANALYTICS_ENABLED: 'false' }), probe: usageRows, minSeconds: USAGE_WINDOW_SECONDS },
    {
      // Usage rows are written in the 50 s after their minute ends (the default spread), so
      // what a window pays for depends on where in the minute it starts. Each window starts
      // 2-8 s before a minute ends: the rows of that minute (every user has checked by then)
      // are written entirely inside the window, exactly one minute's rows for its 60 s of
      // load, as under continuous load; the rows of the next minute are written in the 60 s
      // after it, while the targets after it are loaded (in a focused run the ceiling; never
      // the reference, which comes after the ceiling). Unaligned, a window paid for about 0.6
      // of a minute's rows on average and its reference, two windows on, for about 0.4
      // (worked out from this schedule, not measured), which flattered recording. The
      // warm-up ends before a minute ends, for the same reason.
      name: ANALYTICS_ON,
      start: node(ANALYTICS_ON, { USAGE_ANALYTICS_ENABLED: 'true', USAGE_FLUSH_INTERVAL_MS: '5000' }),
      minSeconds: USAGE_WINDOW_SECONDS,
      versus: ANALYTICS_OFF,
      bar: 0.95,
      probe: usageRows,
      minuteAligned: true,
    },
    { name: NODE_2, start: node(NODE_2, { RATE_LIMITING_WORKERS: '2', ...(process.env.BENCH_NODE_ENV ? JSON.parse(process.env.BENCH_NODE_ENV) : {}) }), versus: CEILING_2, bar: 0.7, report: forwardingReport },
  ];
}

/**
 * `npm run bench -- throughput`. Every target runs at once but idles while another is
 * loaded; rounds visit the targets in turn, so the drift of a shared machine reaches
 * all of them alike. Each round gives a ratio per target against its reference; the
 * median round is reported.
 */
export async function throughput(options: ThroughputOptions): Promise<boolean> {
  const generator = pickGenerator();
  const redis = await startRedis();
  const all = targets(redis);
  const wanted = all.filter((t) => options.only === undefined || t.name.includes(options.only));
  const needed = new Set([CEILING, ...wanted.map((t) => t.name), ...wanted.map((t) => t.versus ?? CEILING)]);
  if (needed.has(LOCAL)) needed.add(SAME_BYTES);
  if (needed.has(NODE_2)) needed.add(SAME_BYTES_2);
  const specs = all.filter((t) => needed.has(t.name));
  const started: Array<{ name: string; target: Target }> = [];
  const runs = new Map<string, LoadResult[]>();
  const probes = new Map<string, number[]>();
  /** Server CPU µs (all its processes) over its loaded windows. */
  const cpu = new Map<string, number>();
  /** The bench's redis-server's CPU µs over each target's loaded windows. */
  const redisCpu = new Map<string, number>();
  const cpuPerCheck = (name: string): number => cpu.get(name)! / runs.get(name)!.reduce((sum, r) => sum + r.total, 0);
  const notes: string[] = [];
  try {
    for (const spec of specs) started.push({ name: spec.name, target: await spec.start() });
    const load = (target: Target, seconds: number) =>
      runLoad(generator, {
        url: target.url, path: target.path, connections: options.connections, users: options.users, durationSeconds: seconds,
        ...(target.bodies ? { bodies: target.bodies } : {}),
      });
    for (const [index, { target }] of started.entries()) {
      if (specs[index]!.minuteAligned) await untilSecondOfMinute(45, 55);
      await load(target, options.warmupSeconds);
    }
    for (let round = 1; round <= options.rounds; round++) {
      const line: string[] = [];
      for (const [index, { name, target }] of started.entries()) {
        const probe = specs[index]!.probe;
        if (specs[index]!.minuteAligned) await untilSecondOfMinute(52, 58);
        const samples = probes.get(name) ?? [];
        probes.set(name, samples);
        const sampler = probe ? setInterval(() => void probe.read(target).then((v) => samples.push(v), () => undefined), 250) : null;
        // The server's CPU while it is loaded (all its processes), per check answered.
        const cpuBefore = treeCpuMicros(target.pid!);
        const redisBefore = treeCpuMicros(redis.pid);
        const seconds = Math.max(options.durationSeconds, specs[index]!.minSeconds ?? 0);
        const result = await load(target, seconds).finally(() => sampler && clearInterval(sampler));
        cpu.set(name, (cpu.get(name) ?? 0) + treeCpuMicros(target.pid!) - cpuBefore);
        redisCpu.set(name, (redisCpu.get(name) ?? 0) + treeCpuMicros(redis.pid) - redisBefore);
        // Failures (non-2xx, socket errors, wrk's 2 s timeouts) are reported, not hidden;
        // a target with more than 0.1 % of its requests failing misses its bar.
        if (result.failures > 0) notes.push(`round ${round}: ${name}: ${result.failures} failed requests of ${result.total}`);
        runs.set(name, [...(runs.get(name) ?? []), result]);
        line.push(`${name}: ${Math.round(result.requestsPerSecond)}`);
      }
      console.log(`round ${round}/${options.rounds}  ${line.join('  |  ')}`);
    }
    for (const [index, { target }] of started.entries()) {
      const report = specs[index]!.report;
      if (report) notes.push(await report(target));
    }
  } finally {
    await Promise.all(started.map(({ target }) => target.stop()));
    await redis.stop();
  }

  let ok = true;
  const rows: Row[] = specs.map((spec) => {
    const mine = runs.get(spec.name)!;
    const versus = spec.versus ?? CEILING;
    const theirs = runs.get(versus)!;
    const ratio = median(mine.map((r, i) => r.requestsPerSecond / theirs[i]!.requestsPerSecond));
    // The same comparison in server CPU per check (theirs / mine): a bar must be reached in both.
    const cpuRatio = cpuPerCheck(versus) / cpuPerCheck(spec.name);
    const failures = mine.reduce((sum, r) => sum + r.failures, 0);
    const failing = failures > 0.001 * mine.reduce((sum, r) => sum + r.total, 0);
    if ((spec.bar !== undefined && (ratio < spec.bar || cpuRatio < spec.bar)) || failing) ok = false;
    return {
      target: spec.name,
      'req/s': Math.round(median(mine.map((r) => r.requestsPerSecond))),
      'p50 ms': median(mine.map((r) => r.p50Ms)).toFixed(2),
      'p99 ms': median(mine.map((r) => r.p99Ms)).toFixed(2),
      ratio: spec.name === versus ? '1.00' : `${ratio.toFixed(2)} vs ${versus === CEILING ? 'ceiling' : versus}`,
      'CPU µs/check': cpuPerCheck(spec.name).toFixed(1),
      'CPU ratio': spec.name === versus ? '1.00' : cpuRatio.toFixed(2),
      bar: spec.bar === undefined ? '' : `≥ ${spec.bar}`,
      failed: String(failures),
      'during load': spec.probe ? `${spec.probe.label}: ${Math.round(Math.max(0, ...(probes.get(spec.name) ?? []).filter(Number.isFinite)))}` : '',
    };
  });
  // Redis shares the machine's cores with the node here (in a deployment it has its own):
  // what it spent while a target was loaded is CPU that target's server could not use.
  for (const name of [LOCAL_REDIS, REDIS_MODE]) {
    const checks = runs.get(name)?.reduce((sum, r) => sum + r.total, 0);
    if (checks) notes.push(`${name}: redis-server's own CPU while it was loaded: ${(redisCpu.get(name)! / checks).toFixed(2)} µs per check (on the same cores)`);
  }
  for (const [name, bytesOnly] of [[LOCAL, SAME_BYTES], [NODE_2, SAME_BYTES_2]] as const) {
    const ours = runs.get(name);
    const theirs = runs.get(bytesOnly);
    if (!ours || !theirs) continue;
    const ratio = median(ours.map((r, i) => r.requestsPerSecond / theirs[i]!.requestsPerSecond));
    notes.push(`${name} vs ${bytesOnly} (the same response body and headers, nothing decided): ${ratio.toFixed(2)}`);
  }
  const command = `npm run bench -- throughput --duration ${options.durationSeconds} --rounds ${options.rounds} --connections ${options.connections}${options.only === undefined ? '' : ` --only ${options.only}`}`;
  console.log(`\n${table(rows)}\n${notes.join('\n')}\n`);
  const markdown = reportMarkdown({
    title: options.only === undefined ? 'Throughput' : `Throughput: the targets matching "${options.only}" and their references`,
    command,
    method:
      `Load: ${generator} (1 thread) in its own process, ${options.connections} keep-alive connections, ` +
      `${options.users} distinct users, POST bodies of the same shape to every target. ${options.warmupSeconds} s warm-up per target, then ` +
      `${options.rounds} rounds of ${options.durationSeconds} s per target (the usage analytics pair and write-behind ${USAGE_WINDOW_SECONDS} s: ` +
      `usage rows are written after their minute ends, and what a node does once a minute must fall in both sides' windows alike; each window with usage recording starts 2-8 s before a wall-clock minute ends, so it pays for exactly one minute's rows), visited in turn; ratios are the median of the per-round ratios. CPU µs/check: the CPU time of ` +
      `all the server's processes while it was loaded, per check answered; the CPU ratio is the reference's over the target's. A bar ` +
      `must be reached by both ratios. Redis's CPU is in neither CPU figure (it is given under the table).`,
    rows,
    notes,
  });
  // A focused run (--only) keeps its own report beside the full run's.
  const report = options.only === undefined ? 'throughput' : `throughput-${options.only.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}`;
  console.log(`report: ${writeResult(report, markdown, { options, generator, rows })}`);
  return ok;
}

/**
 * `npm run bench -- accuracy [--only <scenario>] [--json]` and `npm run bench:quick`:
 * runs the accuracy scenarios (./scenarios.ts), judges every answered check against the
 * reference model (bench/reference) replayed over the decision times the nodes reported,
 * prints a table per scenario and writes bench/results/accuracy(-quick).md and .json.
 */
import { computeAccuracy, type AccuracyReport, type ObservedDecision, type ScopeReport } from '../reference/accuracy.js';
import { progress } from '../lib/progress.js';
import { machineLine, markdownTable, table, writeResult, type Row } from '../lib/report.js';
import type { Answer } from './load.js';
import { startSharedDatabase } from './nodes.js';
import { QUICK_SCENARIOS, SCENARIOS, TIERS, WINDOWS, refLimitsFromEnv, runScenario, type Scenario, type ScenarioRun } from './scenarios.js';
import { buildWorkload, describeWorkload, USER_KINDS, type Workload, type WorkloadOptions } from './workloads.js';

export interface AccuracyOptions {
  quick: boolean;
  /** Only this scenario (by name). */
  only?: string;
  /** Print JSON on stdout instead of the tables. */
  json: boolean;
  seed?: number;
}

interface Profile {
  durationMs: number;
  concurrency: number;
  workload: Omit<WorkloadOptions, 'seed' | 'prefix' | 'durationMs' | 'tiers' | 'windows'>;
}

/** Sizes of a run. The full run's cold users alone are ≥ 100k ids per scenario. */
const PROFILES: Record<'full' | 'quick', Profile> = {
  // About 900 requests/s planned: what a 3-node cluster answered here (2 slow cores, the
  // client included); the client sends late rather than drop when the nodes fall behind.
  full: {
    durationMs: 180_000,
    concurrency: 64,
    workload: { steadyUsers: 100, burstyUsers: 30, hotUsers: 9, coldUsers: 100_000, hotRatePerSecond: 8, peekShare: 0.02 },
  },
  quick: {
    durationMs: 20_000,
    concurrency: 32,
    workload: { steadyUsers: 45, burstyUsers: 24, hotUsers: 6, coldUsers: 2_000, hotRatePerSecond: 8, peekShare: 0.02 },
  },
};

export interface ScenarioResult {
  name: string;
  title: string;
  bar: number;
  pass: boolean;
  /** Why it failed, when it did. */
  failure: string | null;
  accuracy: number;
  overAdmission: number;
  falseDenials: number;
  agreement: number;
  decisions: number;
  /** Checks the system denied (of `decisions`). */
  denied: number;
  unanswered: number;
  unansweredByReason: Record<string, number>;
  planned: number;
  answeredPerSecond: number;
  maxLagMs: number;
  wallSeconds: number;
  modes: Record<string, number>;
  events: string[];
  disagreementsByPath: Record<string, number>;
  /** The first disagreements, readable. */
  firstDisagreements: string[];
  /** The warm-up before the load (other users), judged apart. */
  warmup: { decisions: number; unanswered: number; accuracy: number; agreement: number } | null;
  /** Tail of every node's output (warnings and errors). */
  logs: Record<string, string>;
  report: AccuracyReport | null;
  byKind: Record<string, { accuracy: number; overAdmission: number; falseDenials: number; agreement: number; decisions: number }>;
}

/** Traffic of other users before the measured load: JIT, connections and caches warm up. */
const WARMUP_MS = 4000;

const pct = (x: number): string => `${(100 * x).toFixed(3)} %`;

/**
 * The observations in the order the reference should replay them. A user's decisions made
 * in the same ms are ordered as the deciding node made them: by the day usage they left
 * (it only grows within a day window), a charged admission before the answers that saw it.
 */
export function toObservations(answers: Answer[], workload: Workload): ObservedDecision[] {
  return replayOrder(answers, workload).map((a) => {
    const r = workload.requests[a.index]!;
    return { userId: r.userId, tier: r.tier, at: a.decidedAt, cost: r.cost, allowedBySystem: a.allowed };
  });
}

/** The answers in the order `toObservations` lists them. */
function replayOrder(answers: Answer[], workload: Workload): Answer[] {
  return [...answers].sort((a, b) => {
    if (a.decidedAt !== b.decidedAt) return a.decidedAt - b.decidedAt;
    if (a.dayUsage !== b.dayUsage) return a.dayUsage - b.dayUsage;
    const charged = (x: Answer): number => (x.allowed && workload.requests[x.index]!.cost > 0 ? 0 : 1);
    return charged(a) - charged(b);
  });
}

function scopeRow(label: string, scope: ScopeReport): Row {
  const minute = scope.byWindow.minute.costUnits;
  return {
    scope: label,
    'accuracy (minute)': pct(minute.accuracy),
    'hour': pct(scope.byWindow.hour.costUnits.accuracy),
    'day': pct(scope.byWindow.day.costUnits.accuracy),
    'per decision': pct(scope.perDecision.costUnits.accuracy),
    'over-admitted': minute.overAdmission,
    'false denials': minute.falseDenials,
    'admitted (ref)': minute.expected,
    agreement: pct(scope.agreement.rate),
    decisions: scope.agreement.decisions,
  };
}

function rowsOf(result: ScenarioResult): Row[] {
  if (result.report === null) return [];
  const rows = [scopeRow('overall', result.report.overall)];
  for (const [tier, scope] of Object.entries(result.report.byTier).sort()) rows.push(scopeRow(`tier ${tier}`, scope));
  return rows;
}

function kindRows(result: ScenarioResult): Row[] {
  return Object.entries(result.byKind).map(([kind, k]) => ({
    users: kind,
    accuracy: pct(k.accuracy),
    'over-admitted': k.overAdmission,
    'false denials': k.falseDenials,
    agreement: pct(k.agreement),
    decisions: k.decisions,
  }));
}

function summaryLines(result: ScenarioResult): string[] {
  const reasons = Object.entries(result.unansweredByReason).map(([r, n]) => `${r}: ${n}`).join(', ');
  return [
    `${result.pass ? 'PASS' : 'FAIL'} ${result.name}: accuracy ${pct(result.accuracy)} (bar ≥ ${pct(result.bar)}), over-admitted ${result.overAdmission}, false denials ${result.falseDenials} (cost units, minute windows), decision agreement ${pct(result.agreement)}`,
    `  ${result.decisions} decisions (${result.denied} denied) of ${result.planned} planned requests; unanswered (excluded): ${result.unanswered}${reasons ? ` (${reasons})` : ''}; ` +
      `${result.answeredPerSecond.toFixed(0)} answers/s, client behind schedule by ≤ ${result.maxLagMs} ms; decided by: ${Object.entries(result.modes).map(([m, n]) => `${m} ${n}`).join(', ')}; ${result.wallSeconds.toFixed(0)} s wall`,
    ...(result.warmup
      ? [
          `  warm-up first (${WARMUP_MS / 1000} s of other users, not in the figures): ${result.warmup.decisions} decisions, ${result.warmup.unanswered} unanswered, ` +
            `accuracy ${pct(result.warmup.accuracy)}, agreement ${pct(result.warmup.agreement)}`,
        ]
      : []),
    ...result.events.map((e) => `  event ${e}`),
    ...(result.report && result.report.disagreementCount > 0
      ? [
          `  ${result.report.disagreementCount} decisions disagree with the reference (by decision path: ${Object.entries(result.disagreementsByPath).map(([m, n]) => `${m} ${n}`).join(', ')}); the first:`,
          ...result.firstDisagreements.map((line) => `    ${line}`),
        ]
      : []),
    ...(Object.keys(result.logs).length ? [`  node log lines (last 3 kB of each): ${logSummary(result.logs)}`] : []),
    ...(result.failure ? [`  failure: ${result.failure}`] : []),
  ];
}

/** Warning and error lines per node (pino levels 40, 50, 60), from the tail kept. */
function logSummary(logs: Record<string, string>): string {
  return Object.entries(logs)
    .map(([node, text]) => {
      const warn = (text.match(/"level":40/g) ?? []).length;
      const error = (text.match(/"level":(50|60)/g) ?? []).length;
      return `${node} ${warn} warn / ${error} error`;
    })
    .join(', ');
}

function judge(scenario: Scenario, workload: Workload, run: ScenarioRun, wallSeconds: number): ScenarioResult {
  const limitsFor = (tier: string) => refLimitsFromEnv(run.nodeEnv, tier);
  const ordered = replayOrder(run.answers, workload);
  const observed = toObservations(ordered, workload);
  const report = computeAccuracy(observed, limitsFor, { maxDisagreements: Number.POSITIVE_INFINITY });
  // Which decision path the disagreeing answers took, and when (from the start of the load).
  const disagreementsByPath: Record<string, number> = {};
  for (const d of report.disagreements) {
    const mode = ordered[d.index]!.mode;
    disagreementsByPath[mode] = (disagreementsByPath[mode] ?? 0) + 1;
  }
  const firstDisagreements = report.disagreements.slice(0, 8).map(({ index, observed: o, reference: r }) => {
    const a = ordered[index]!;
    return (
      `${o.userId} (${o.tier}) at +${((o.at - run.startedAt) / 1000).toFixed(3)} s cost ${o.cost} via ${a.mode}: ` +
      `system ${o.allowedBySystem ? 'admitted' : `denied (${a.code})`}, reference ${r.allowed ? 'admitted' : `denied (${r.limitedBy})`}`
    );
  });
  report.disagreements = report.disagreements.slice(0, 10);
  const kindOf = new Map<string, string>();
  for (const kind of USER_KINDS) for (const id of workload.users[kind]) kindOf.set(id, kind);
  const byKind: ScenarioResult['byKind'] = {};
  for (const kind of USER_KINDS) {
    // Users are independent, so one kind's users can be judged alone.
    const subset = observed.filter((o) => kindOf.get(o.userId) === kind);
    const r = computeAccuracy(subset, limitsFor, { maxDisagreements: 0 });
    const minute = r.overall.byWindow.minute.costUnits;
    byKind[kind] = { accuracy: r.accuracy, overAdmission: minute.overAdmission, falseDenials: minute.falseDenials, agreement: r.overall.agreement.rate, decisions: r.overall.agreement.decisions };
  }
  const minute = report.overall.byWindow.minute.costUnits;
  const reasons: string[] = [];
  if (report.accuracy < scenario.bar) reasons.push(`accuracy ${pct(report.accuracy)} below the bar ${pct(scenario.bar)}`);
  if (run.answers.length === 0) reasons.push('no request was answered');
  if (run.faultError !== null) reasons.push(`the fault could not be injected: ${run.faultError}`);
  return {
    name: scenario.name,
    title: scenario.title,
    bar: scenario.bar,
    pass: reasons.length === 0,
    failure: reasons.length ? reasons.join('; ') : null,
    accuracy: report.accuracy,
    overAdmission: minute.overAdmission,
    falseDenials: minute.falseDenials,
    agreement: report.overall.agreement.rate,
    decisions: report.overall.agreement.decisions,
    denied: run.answers.filter((a) => !a.allowed).length,
    unanswered: run.unansweredCount,
    unansweredByReason: Object.fromEntries(run.unanswered),
    planned: workload.requests.length,
    answeredPerSecond: run.answers.length / Math.max(0.001, run.loadMs / 1000),
    maxLagMs: run.maxLagMs,
    wallSeconds,
    modes: run.modes,
    events: run.events,
    disagreementsByPath,
    firstDisagreements,
    warmup: null,
    logs: run.logs,
    report,
    byKind,
  };
}

/** The warm-up's own figures: reported, never part of a scenario's result. */
function judgeWarmup(workload: Workload, run: ScenarioRun): ScenarioResult['warmup'] {
  const warmup = run.warmup;
  if (warmup === null) return null;
  const report = computeAccuracy(toObservations(warmup.answers, workload), (tier) => refLimitsFromEnv(run.nodeEnv, tier), { maxDisagreements: 0 });
  return { decisions: warmup.answers.length, unanswered: warmup.unansweredCount, accuracy: report.accuracy, agreement: report.overall.agreement.rate };
}

function failedResult(scenario: Scenario, planned: number, err: unknown, wallSeconds: number): ScenarioResult {
  return {
    name: scenario.name, title: scenario.title, bar: scenario.bar, pass: false, failure: `the scenario did not run: ${(err as Error).message}`,
    accuracy: 0, overAdmission: 0, falseDenials: 0, agreement: 0, decisions: 0, denied: 0, unanswered: 0, unansweredByReason: {}, planned,
    answeredPerSecond: 0, maxLagMs: 0, wallSeconds, modes: {}, events: [], disagreementsByPath: {}, firstDisagreements: [], warmup: null, logs: {}, report: null, byKind: {},
  };
}

/** Runs the chosen scenarios; true when every one reached its bar. */
export async function accuracy(options: AccuracyOptions): Promise<boolean> {
  const profile = PROFILES[options.quick ? 'quick' : 'full'];
  const names = options.quick ? QUICK_SCENARIOS : SCENARIOS.map((s) => s.name);
  const chosen = SCENARIOS.filter((s) => names.includes(s.name) && (options.only === undefined || s.name === options.only));
  if (chosen.length === 0) {
    throw new Error(`no scenario named ${options.only}; scenarios: ${names.join(', ')}`);
  }
  const seed = options.seed ?? 7;
  const out = (line = ''): void => {
    if (!options.json) console.log(line);
  };
  const windowsNote =
    `Windows shortened for the benchmark: minute = ${WINDOWS.minuteMs / 1000} s, hour = ${WINDOWS.hourMs / 1000} s, ` +
    `day (quota reset interval) = ${WINDOWS.dayMs / 1000} s, so every run crosses minute, hour and day boundaries.`;
  const tiersNote = Object.entries(TIERS)
    .map(([t, f]) => `${t}: burst ${f.burst}, ${f.perMinute}/minute, ${f.perHour}/hour, ${f.perDay}/day`)
    .join('; ');
  out(windowsNote);
  out(`Limits per shortened window: ${tiersNote}; quota grace 4 s, then block.`);
  out();

  const started = Date.now();
  const results: ScenarioResult[] = [];
  const database = await startSharedDatabase();
  try {
    for (const [i, scenario] of chosen.entries()) {
      const workload = buildWorkload({
        ...profile.workload,
        seed: seed + i,
        prefix: `acc-${scenario.name}-${Date.now().toString(36)}`,
        durationMs: profile.durationMs,
        tiers: TIERS,
        windows: WINDOWS,
      });
      const warmup = buildWorkload({
        ...profile.workload,
        steadyUsers: 20,
        burstyUsers: 6,
        hotUsers: 3,
        coldUsers: 500,
        seed: seed + 1000 + i,
        prefix: `acc-${scenario.name}-warmup-${Date.now().toString(36)}`,
        durationMs: WARMUP_MS,
        tiers: TIERS,
        windows: WINDOWS,
      });
      const bar = progress(`accuracy ${scenario.name}`.padEnd(24), workload.requests.length);
      const t0 = Date.now();
      let completed = 0;
      let phase = '';
      let result: ScenarioResult;
      try {
        const run = await runScenario(scenario, {
          workload,
          warmup,
          durationMs: profile.durationMs,
          concurrency: profile.concurrency,
          database,
          onPhase: (p) => {
            phase = p;
            bar.update(completed, p);
          },
          onProgress: (n) => {
            completed = n;
            if (n % 200 === 0) bar.update(n, phase);
          },
        });
        bar.finish('judging');
        result = judge(scenario, workload, run, (Date.now() - t0) / 1000);
        result.warmup = judgeWarmup(warmup, run);
      } catch (err) {
        bar.finish('failed');
        result = failedResult(scenario, workload.requests.length, err, (Date.now() - t0) / 1000);
      }
      results.push(result);
      out(`## ${scenario.name}: ${scenario.title}`);
      const shape = describeWorkload(workload);
      out(`workload (seed ${seed + i}): ${Object.entries(shape).map(([k, v]) => `${k} ${v.users} users / ${v.requests} requests`).join(', ')}`);
      out(table(rowsOf(result)));
      out();
      out(table(kindRows(result)));
      for (const line of summaryLines(result)) out(line);
      out();
    }
  } finally {
    await database.stop();
  }

  const pass = results.every((r) => r.pass);
  const wallSeconds = (Date.now() - started) / 1000;
  const headline: Row[] = results.map((r) => ({
    scenario: r.name,
    accuracy: pct(r.accuracy),
    bar: `≥ ${pct(r.bar)}`,
    result: r.pass ? 'pass' : 'FAIL',
    'over-admitted': r.overAdmission,
    'false denials': r.falseDenials,
    agreement: pct(r.agreement),
    decisions: r.decisions,
    unanswered: r.unanswered,
  }));
  out('## Summary');
  out(table(headline));
  out(`${pass ? 'all scenarios reached their bars' : 'SOME SCENARIOS ARE BELOW THEIR BARS'}; ${wallSeconds.toFixed(0)} s wall`);

  const command = `npm run bench -- ${options.quick ? 'quick' : 'accuracy'}${options.only ? ` --only ${options.only}` : ''}`;
  const json = {
    // A partial run (--only) does not overwrite the report of the full run.
    name: `accuracy${options.quick ? '-quick' : ''}${options.only ? `-${options.only}` : ''}`,
    date: new Date().toISOString(),
    command,
    machine: machineLine(),
    seed,
    windows: WINDOWS,
    tiers: TIERS,
    profile,
    pass,
    wallSeconds,
    scenarios: results,
  };
  const markdown = [
    `# Accuracy${options.quick ? ' (quick)' : ''}`,
    '',
    `Command: \`${command}\``,
    '',
    `Machine: ${machineLine()}. Date: ${json.date}. Wall time: ${wallSeconds.toFixed(0)} s.`,
    '',
    `${windowsNote} Limits per shortened window: ${tiersNote}; quota grace 4 s, then block.`,
    '',
    'Accuracy is DESIGN §2\'s `1 − Σ|A − E| / Σ E` over users × minute windows in cost units, E from the reference model ' +
      '(bench/reference) replayed over the `decided_at` times the nodes reported. Requests without an answer (connection errors, ' +
      'timeouts, non-200) are not decisions: they are counted apart and excluded. Once the ring is up, each scenario first sends ' +
      `${WARMUP_MS / 1000} s of warm-up traffic from other users; it is judged apart and shown under the scenario, not part of its figures.`,
    '',
    markdownTable(headline),
    '',
    ...results.flatMap((r) => [`## ${r.name}: ${r.title}`, '', markdownTable(rowsOf(r)), '', markdownTable(kindRows(r)), '', ...summaryLines(r).map((l) => `    ${l}`), '']),
  ].join('\n');
  const path = writeResult(json.name, markdown, json);
  out(`wrote ${path}`);
  if (options.json) process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
  return pass;
}

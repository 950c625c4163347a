/**
 * Decision time over a sliding window (default 5 minutes), kept as per-slot histograms
 * with logarithmic bins, so percentiles cost nothing on the request path and memory is
 * fixed: `slots × bins` integers. Percentiles are accurate to one bin (≈ 6 %).
 */
export interface SliSnapshot {
  windowSeconds: number;
  decisions: number;
  /** Share of decisions answered within the decision timeout (1 when there were none). */
  withinTimeoutRatio: number;
  p50Ms: number | null;
  p99Ms: number | null;
}

const BINS_PER_DECADE = 40;
const MIN_MS = 0.001; // 1 µs
const DECADES = 8; // up to 100 s
const BIN_COUNT = BINS_PER_DECADE * DECADES + 1;

export class DecisionSli {
  private readonly slots: Uint32Array[];
  private readonly slotStart: Float64Array;
  private readonly withinTimeout: Float64Array;

  constructor(
    private readonly timeoutMs: number,
    private readonly now: () => number = Date.now,
    private readonly windowMs = 300_000,
    private readonly slotMs = 10_000,
  ) {
    const count = Math.ceil(windowMs / slotMs);
    this.slots = Array.from({ length: count }, () => new Uint32Array(BIN_COUNT));
    this.slotStart = new Float64Array(count).fill(-1);
    this.withinTimeout = new Float64Array(count);
  }

  /** Records one decision that took `ms`, made at `now`. Called once per decision. */
  record(ms: number, now: number = this.now()): void {
    const start = now - (now % this.slotMs);
    const index = Math.floor(start / this.slotMs) % this.slots.length;
    const bins = this.slots[index]!;
    if (this.slotStart[index] !== start) {
      bins.fill(0);
      this.slotStart[index] = start;
      this.withinTimeout[index] = 0;
    }
    bins[binOf(ms)]!++;
    if (ms <= this.timeoutMs) this.withinTimeout[index]!++;
  }

  snapshot(): SliSnapshot {
    const now = this.now();
    const merged = new Float64Array(BIN_COUNT);
    let total = 0;
    let within = 0;
    for (let i = 0; i < this.slots.length; i++) {
      const start = this.slotStart[i]!;
      if (start < 0 || start <= now - this.windowMs) continue;
      const bins = this.slots[i]!;
      for (let b = 0; b < BIN_COUNT; b++) merged[b]! += bins[b]!;
      within += this.withinTimeout[i]!;
    }
    for (let b = 0; b < BIN_COUNT; b++) total += merged[b]!;
    return {
      windowSeconds: this.windowMs / 1000,
      decisions: total,
      withinTimeoutRatio: total === 0 ? 1 : within / total,
      p50Ms: percentile(merged, total, 0.5),
      p99Ms: percentile(merged, total, 0.99),
    };
  }
}

function binOf(ms: number): number {
  if (!(ms > MIN_MS)) return 0;
  const bin = Math.ceil(Math.log10(ms / MIN_MS) * BINS_PER_DECADE);
  return bin >= BIN_COUNT ? BIN_COUNT - 1 : bin;
}

/** Upper edge of the bin holding the q-quantile. */
function percentile(bins: Float64Array, total: number, q: number): number | null {
  if (total === 0) return null;
  const rank = Math.ceil(total * q);
  let seen = 0;
  for (let b = 0; b < bins.length; b++) {
    seen += bins[b]!;
    if (seen >= rank) return Number((MIN_MS * 10 ** (b / BINS_PER_DECADE)).toPrecision(3));
  }
  return null;
}

/**
 * A progress bar on stderr while a benchmark runs: one line redrawn in place on a terminal,
 * a plain line every 10 % otherwise (CI logs), nothing with --json on stdout affected.
 */
export interface Progress {
  /** Moves to `done` of `total` (absolute), with an optional note (the current step). */
  update(done: number, note?: string): void;
  /** Completes the bar and ends the line. */
  finish(note?: string): void;
}

const WIDTH = 28;

export function progress(label: string, total: number, stream: NodeJS.WriteStream = process.stderr): Progress {
  const tty = stream.isTTY === true;
  const started = Date.now();
  let lastDecile = -1;
  let finished = false;
  const render = (done: number, note: string): string => {
    const share = total <= 0 ? 1 : Math.min(1, Math.max(0, done / total));
    const filled = Math.round(share * WIDTH);
    const seconds = ((Date.now() - started) / 1000).toFixed(0);
    return `${label} [${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}] ${(share * 100).toFixed(0).padStart(3)}% ${seconds}s ${note}`;
  };
  return {
    update(done, note = '') {
      if (finished) return;
      if (tty) {
        stream.write(`\r\u001b[2K${render(done, note)}`);
        return;
      }
      const decile = total <= 0 ? 10 : Math.floor((Math.min(done, total) / total) * 10);
      if (decile !== lastDecile) {
        lastDecile = decile;
        stream.write(`${render(done, note)}\n`);
      }
    },
    finish(note = 'done') {
      if (finished) return;
      finished = true;
      stream.write(`${tty ? '\r\u001b[2K' : ''}${render(total, note)}\n`);
    },
  };
}

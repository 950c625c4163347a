import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './processes.js';

export interface Row {
  [column: string]: string | number;
}

/** A plain-text table with right-aligned numbers. */
export function table(rows: Row[]): string {
  if (rows.length === 0) return '';
  const columns = Object.keys(rows[0]!);
  const cells = rows.map((row) => columns.map((c) => String(row[c] ?? '')));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)));
  const line = (values: string[]) => values.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ');
  return [line(columns), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n');
}

export function markdownTable(rows: Row[]): string {
  if (rows.length === 0) return '';
  const columns = Object.keys(rows[0]!);
  return [
    `| ${columns.join(' | ')} |`,
    `| ${columns.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((row) => `| ${columns.map((c) => String(row[c] ?? '')).join(' | ')} |`),
  ].join('\n');
}

export function machineLine(): string {
  const cpu = cpus();
  return `${cpu.length} × ${cpu[0]?.model ?? 'unknown CPU'}, Node ${process.version}`;
}

/**
 * A benchmark's markdown report: title, the command that reproduces it, the machine and
 * method, the date, the table and notes under it (as bullets).
 */
export function reportMarkdown(report: { title: string; command: string; method: string; rows: Row[]; notes?: string[] }): string {
  return [
    `# ${report.title}`,
    '',
    `Command: \`${report.command}\``,
    '',
    `Machine: ${machineLine()}. ${report.method}`,
    '',
    `Date: ${new Date().toISOString()}`,
    '',
    markdownTable(report.rows),
    '',
    ...(report.notes ?? []).map((n) => `- ${n}`),
    ...(report.notes?.length ? [''] : []),
  ].join('\n');
}

/** Writes `<name>.md` (committed, linked from the README) and `<name>.json` under bench/results. */
export function writeResult(name: string, markdown: string, json: unknown): string {
  const dir = join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${name}.md`), markdown);
  writeFileSync(join(dir, `${name}.json`), JSON.stringify(json, null, 2));
  return join(dir, `${name}.md`);
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

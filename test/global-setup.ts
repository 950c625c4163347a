import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

/** Process-level tests start `dist/src/main.js`; `npm test` builds first, a bare `vitest` builds here. */
export default function setup(): void {
  if (!existsSync(new URL('../dist/src/main.js', import.meta.url))) {
    execFileSync('npm', ['run', 'build'], { stdio: 'inherit' });
  }
}

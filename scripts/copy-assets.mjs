// Copies the non-TypeScript files the code reads at run time (Lua scripts, protos) next to
// the compiled JavaScript, so dist/ runs on its own.
import { cpSync, existsSync } from 'node:fs';

const assets = ['src/storage/redis/lua'];
for (const dir of assets) {
  if (existsSync(dir)) cpSync(dir, `dist/${dir}`, { recursive: true });
}

import { describe, expect, it } from 'vitest';
import { decide, newUserState } from '../src/node/engine.js';
import { loadVectors, projectDecision } from './vectors/vectors.js';

const file = loadVectors();

describe('decision vectors (hand-computed) through the TypeScript engine', () => {
  it.each(file.vectors.map((v) => [v.name, v] as const))('%s', (_name, vector) => {
    const limits = file.profiles[vector.profile]!;
    expect(limits, `profile ${vector.profile}`).toBeDefined();
    const state = newUserState();
    vector.steps.forEach((step, index) => {
      for (let r = 0; r < (step.repeat ?? 1); r++) {
        const decision = decide(state, limits, step.cost, file.epoch + step.at);
        expect(projectDecision(decision, step.expect, file.epoch), `step ${index + 1} (at ${step.at}, cost ${step.cost}, repeat ${r + 1})`).toEqual(step.expect);
      }
    });
  });
});

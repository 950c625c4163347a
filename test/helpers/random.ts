/** The seeded PRNG the benchmarks use (mulberry32), so generated tests are reproducible. */
export { pick, randomInt, seededRandom } from '../../bench/lib/random.js';

/** A TCP port free on 127.0.0.1 right now (the OS picks it): the benchmarks' helper. */
export { freePort } from '../../bench/lib/processes.js';

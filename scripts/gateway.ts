/**
 * A small round-robin HTTP gateway for local clusters (what nginx does in
 * docker-compose.cluster.yml): keep-alive connections to every node, a failed node
 * skipped for a few seconds, one retry on another node.
 *   node dist/scripts/gateway.js <port> http://127.0.0.1:9100 http://127.0.0.1:9110 …
 */
import http from 'node:http';

export interface Gateway {
  port: number;
  close(): Promise<void>;
}

export async function startGateway(port: number, upstreams: string[]): Promise<Gateway> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const downUntil = new Map<string, number>();
  let next = 0;
  const pick = (exclude?: string): string | undefined => {
    for (let i = 0; i < upstreams.length; i++) {
      const candidate = upstreams[next++ % upstreams.length]!;
      if (candidate !== exclude && (downUntil.get(candidate) ?? 0) <= Date.now()) return candidate;
    }
    return undefined;
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const attempt = (upstream: string | undefined, retried: boolean): void => {
        if (upstream === undefined) {
          res.writeHead(502, { 'content-type': 'application/json' }).end('{"statusCode":502,"error":"BAD_GATEWAY","message":"no node is reachable"}');
          return;
        }
        const url = new URL(req.url ?? '/', upstream);
        const forward = http.request(url, { method: req.method, headers: req.headers, agent }, (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        });
        forward.on('error', () => {
          downUntil.set(upstream, Date.now() + 2000);
          if (!retried && !res.headersSent) attempt(pick(upstream), true);
          else if (!res.headersSent) res.writeHead(502).end();
        });
        forward.end(body);
      };
      attempt(pick(), false);
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

if (process.argv[1]?.endsWith('gateway.js')) {
  const [port, ...upstreams] = process.argv.slice(2);
  const gateway = await startGateway(Number(port), upstreams);
  console.log(`gateway on http://127.0.0.1:${gateway.port} → ${upstreams.join(', ')}`);
}

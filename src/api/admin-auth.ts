/**
 * Bearer-token authentication of the admin API. One token, from configuration
 * (ADMIN_TOKEN). With none configured the admin API is off: every admin route answers 403
 * saying how to turn it on, so it is never open by accident.
 *
 * Who acted, for the audit log: a single shared token cannot tell admins apart, so the
 * caller may name itself in `X-Admin-Actor` (recorded as declared, not proven); without it
 * the actor is `admin`.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ApiError } from './errors.js';

export const ADMIN_DISABLED_MESSAGE = 'the admin API is disabled: set ADMIN_TOKEN to enable it';
const ACTOR_HEADER = 'x-admin-actor';
const ACTOR_MAX_LENGTH = 128;

/**
 * An onRequest hook admitting only requests with `Authorization: Bearer <adminToken>`:
 * 403 when no token is configured, 401 (with `WWW-Authenticate`) when it is missing or wrong.
 */
export function adminAuth(adminToken: string): (request: FastifyRequest, reply: FastifyReply) => Promise<void> {
  // Digests have a fixed length, so the comparison takes the same time whatever is sent.
  const expected = adminToken === '' ? null : digest(adminToken);
  return async (request, reply) => {
    if (expected === null) throw new ApiError('FORBIDDEN', ADMIN_DISABLED_MESSAGE);
    const header = request.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header) : null;
    if (match === null || !timingSafeEqual(digest(match[1]!), expected)) {
      void reply.header('www-authenticate', 'Bearer realm="admin"');
      throw new ApiError('UNAUTHORIZED', match === null ? 'send the admin token as Authorization: Bearer <token>' : 'the admin token is not valid');
    }
  };
}

/** The actor recorded in the audit log for this request (see the file header). */
export function adminActor(request: FastifyRequest): string {
  const declared = request.headers[ACTOR_HEADER];
  if (typeof declared !== 'string') return 'admin';
  // eslint-disable-next-line no-control-regex -- removing control characters is the point
  const clean = declared.replace(/[\u0000-\u001f\u007f]/g, '').trim().slice(0, ACTOR_MAX_LENGTH);
  return clean === '' ? 'admin' : clean;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

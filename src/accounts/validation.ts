/**
 * Validation of what admins send about users and keys. Every function takes the raw
 * input, checks all of it, and returns either the typed value or every problem found,
 * each naming its field as the API spells it (`overrides.burst_limit`).
 *
 * The figures a user may override are the seed's user-tier schema `rate_limits`
 * (`requests_per_minute`, `requests_per_hour`, `requests_per_day`, `burst_limit`):
 * non-negative integers.
 */
export const OVERRIDE_FIGURES = ['requests_per_minute', 'requests_per_hour', 'requests_per_day', 'burst_limit'] as const;
export type OverrideFigure = (typeof OVERRIDE_FIGURES)[number];
export type TierOverrides = Partial<Record<OverrideFigure, number>>;

export const USER_ID_MAX_LENGTH = 256;
export const KEY_NAME_MAX_LENGTH = 200;
/** Longest overlap a rotation may give the old key: 30 days. */
export const MAX_ROTATION_OVERLAP_SECONDS = 30 * 86_400;

export interface Problem {
  field: string;
  message: string;
}

export type Validated<T> = { ok: true; value: T } | { ok: false; problems: Problem[] };

export interface NewUser {
  userId: string;
  tier: string;
  overrides: TierOverrides;
  quotaOverride: number | null;
  disabled: boolean;
}

/** A change to a user; absent fields stay as they are. */
export interface UserPatch {
  tier?: string;
  /** Merged into the stored overrides; a figure set to null is removed (the tier's applies again). */
  overrides?: Partial<Record<OverrideFigure, number | null>>;
  /** null removes the override (the tier's daily figure applies again). */
  quotaOverride?: number | null;
  disabled?: boolean;
}

export interface NewKeyRequest {
  name: string | null;
  /** Epoch ms, or null for a key that does not expire. */
  expiresAt: number | null;
}

export interface RotationRequest {
  overlapSeconds: number;
}

// eslint-disable-next-line no-control-regex -- finding control characters is the point
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;

type Fields = Record<string, unknown>;

class Checker {
  readonly problems: Problem[] = [];

  add(field: string, message: string): void {
    this.problems.push({ field, message });
  }

  object(value: unknown, field: string): Fields | null {
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Fields;
    this.add(field, `${field || 'the body'} must be a JSON object`);
    return null;
  }

  onlyKnown(fields: Fields, known: readonly string[], prefix = ''): void {
    for (const name of Object.keys(fields)) {
      if (!known.includes(name)) this.add(`${prefix}${name}`, `${prefix}${name} is not a known field (known: ${known.join(', ')})`);
    }
  }

  failed<T>(): Validated<T> {
    return { ok: false, problems: this.problems };
  }

  result<T>(value: T): Validated<T> {
    return this.problems.length === 0 ? { ok: true, value } : { ok: false, problems: this.problems };
  }
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function checkUserId(check: Checker, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) check.add('user_id', 'user_id is required and must be a non-empty string');
  else if (value.length > USER_ID_MAX_LENGTH) check.add('user_id', `user_id must be at most ${USER_ID_MAX_LENGTH} characters`);
  else if (CONTROL_CHARACTERS.test(value)) check.add('user_id', 'user_id must not contain control characters');
  return typeof value === 'string' ? value : '';
}

function checkTier(check: Checker, value: unknown, tiers: readonly string[]): string {
  if (typeof value !== 'string' || !tiers.includes(value)) {
    check.add('tier', `tier must be one of ${tiers.join(', ')}${typeof value === 'string' ? `, got "${value}"` : ''}`);
  }
  return typeof value === 'string' ? value : '';
}

function checkOverrides(check: Checker, value: unknown, allowNull: boolean): Partial<Record<OverrideFigure, number | null>> {
  const fields = check.object(value, 'overrides');
  if (fields === null) return {};
  check.onlyKnown(fields, OVERRIDE_FIGURES, 'overrides.');
  const out: Partial<Record<OverrideFigure, number | null>> = {};
  for (const figure of OVERRIDE_FIGURES) {
    if (!(figure in fields)) continue;
    const figureValue = fields[figure];
    if (figureValue === null && allowNull) out[figure] = null;
    else if (isCount(figureValue)) out[figure] = figureValue;
    else check.add(`overrides.${figure}`, `overrides.${figure} must be a non-negative integer${allowNull ? ' or null (back to the tier\'s figure)' : ''}`);
  }
  return out;
}

function checkQuotaOverride(check: Checker, value: unknown): number | null {
  if (value === null) return null;
  if (isCount(value)) return value;
  check.add('quota_override', 'quota_override must be a non-negative integer or null');
  return null;
}

/** Body of `POST /admin/users`. */
export function validateNewUser(body: unknown, tiers: readonly string[]): Validated<NewUser> {
  const check = new Checker();
  const fields = check.object(body, '');
  if (fields === null) return check.failed();
  check.onlyKnown(fields, ['user_id', 'tier', 'overrides', 'quota_override', 'disabled']);
  const userId = checkUserId(check, fields.user_id);
  const tier = checkTier(check, fields.tier, tiers);
  const overrides = 'overrides' in fields ? (checkOverrides(check, fields.overrides, false) as TierOverrides) : {};
  const quotaOverride = 'quota_override' in fields ? checkQuotaOverride(check, fields.quota_override) : null;
  if ('disabled' in fields && typeof fields.disabled !== 'boolean') check.add('disabled', 'disabled must be true or false');
  return check.result({ userId, tier, overrides, quotaOverride, disabled: fields.disabled === true });
}

/** Body of `PATCH /admin/users/:user_id`: at least one field. */
export function validateUserPatch(body: unknown, tiers: readonly string[]): Validated<UserPatch> {
  const check = new Checker();
  const fields = check.object(body, '');
  if (fields === null) return check.failed();
  const known = ['tier', 'overrides', 'quota_override', 'disabled'];
  check.onlyKnown(fields, known);
  if (!known.some((name) => name in fields)) check.add('', `send at least one of ${known.join(', ')}`);
  const patch: UserPatch = {};
  if ('tier' in fields) patch.tier = checkTier(check, fields.tier, tiers);
  if ('overrides' in fields) patch.overrides = checkOverrides(check, fields.overrides, true);
  if ('quota_override' in fields) patch.quotaOverride = checkQuotaOverride(check, fields.quota_override);
  if ('disabled' in fields) {
    if (typeof fields.disabled === 'boolean') patch.disabled = fields.disabled;
    else check.add('disabled', 'disabled must be true or false');
  }
  return check.result(patch);
}

/** Body of `POST /admin/users/:user_id/keys` (may be empty); `nowMs` rejects expiry times in the past. */
export function validateNewKey(body: unknown, nowMs: number): Validated<NewKeyRequest> {
  const check = new Checker();
  const fields = body === undefined || body === null ? {} : check.object(body, '');
  if (fields === null) return check.failed();
  check.onlyKnown(fields, ['name', 'expires_at']);
  let name: string | null = null;
  if (fields.name !== undefined && fields.name !== null) {
    if (typeof fields.name !== 'string' || fields.name.length === 0 || fields.name.length > KEY_NAME_MAX_LENGTH || CONTROL_CHARACTERS.test(fields.name)) {
      check.add('name', `name must be a string of 1 to ${KEY_NAME_MAX_LENGTH} characters without control characters`);
    } else {
      name = fields.name;
    }
  }
  let expiresAt: number | null = null;
  if (fields.expires_at !== undefined && fields.expires_at !== null) {
    const parsed = typeof fields.expires_at === 'string' ? parseTimestamp(fields.expires_at) : null;
    if (parsed === null) check.add('expires_at', 'expires_at must be an ISO 8601 date-time with a time zone, e.g. 2027-01-01T00:00:00Z');
    else if (parsed <= nowMs) check.add('expires_at', 'expires_at must be in the future');
    else expiresAt = parsed;
  }
  return check.result({ name, expiresAt });
}

/** Body of `POST /admin/keys/:id/rotate` (may be empty). */
export function validateRotation(body: unknown, defaultOverlapSeconds: number): Validated<RotationRequest> {
  const check = new Checker();
  const fields = body === undefined || body === null ? {} : check.object(body, '');
  if (fields === null) return check.failed();
  check.onlyKnown(fields, ['overlap_seconds']);
  const value = fields.overlap_seconds ?? defaultOverlapSeconds;
  if (!isCount(value) || value > MAX_ROTATION_OVERLAP_SECONDS) {
    check.add('overlap_seconds', `overlap_seconds must be an integer from 0 to ${MAX_ROTATION_OVERLAP_SECONDS}`);
  }
  return check.result({ overlapSeconds: value as number });
}

/** Epoch ms of an ISO 8601 date-time that names its offset, or null. */
function parseTimestamp(text: string): number | null {
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/i.test(text)) return null;
  const ms = Date.parse(text);
  return Number.isFinite(ms) ? ms : null;
}

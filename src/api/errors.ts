/**
 * The HTTP API's errors, each with a stable code, a default message and a status.
 * Messages of 5xx errors are replaced before they reach callers (see app.ts).
 */
export const API_ERRORS = {
  INVALID_FIELD: { status: 400, message: 'a field of the request is invalid' },
  INVALID_JSON: { status: 400, message: 'the body is not valid JSON' },
  BAD_REQUEST: { status: 400, message: 'the request is not valid' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'send the body as application/json' },
  BODY_TOO_LARGE: { status: 413, message: 'the request body is too large' },
  NOT_FOUND: { status: 404, message: 'no such resource' },
  UNAUTHORIZED: { status: 401, message: 'missing or invalid credentials' },
  FORBIDDEN: { status: 403, message: 'this operation is not allowed' },
  CONFLICT: { status: 409, message: 'the request conflicts with the current state' },
  INTERNAL: { status: 500, message: 'internal error' },
  SERVICE_UNAVAILABLE: { status: 503, message: 'a backing service is unavailable; try again later' },
} as const;

export type ApiErrorCode = keyof typeof API_ERRORS;

export class ApiError extends Error {
  readonly status: number;

  constructor(
    readonly code: ApiErrorCode,
    message?: string,
    /** The request field at fault, when there is one (`user_id`, `checks[3].cost`). */
    readonly field?: string,
  ) {
    super(message ?? API_ERRORS[code].message);
    this.status = API_ERRORS[code].status;
  }
}

/** The body of every error response. */
export interface ErrorBody {
  statusCode: number;
  error: ApiErrorCode;
  message: string;
  field?: string;
}

export const errorBodySchema = {
  type: 'object',
  properties: {
    statusCode: { type: 'integer' },
    error: { type: 'string' },
    message: { type: 'string' },
    field: { type: 'string' },
  },
  required: ['statusCode', 'error', 'message'],
} as const;

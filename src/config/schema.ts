/**
 * What every configuration key may hold and which environment variable sets it.
 * The loader (`load.ts`) walks this table for YAML and the environment alike, so a
 * key added here is validated, documented by `configReference()` and settable by
 * both routes at once.
 */
export type FieldSpec =
  | { type: 'int'; min: number; max?: number; env?: string; doc: string }
  | { type: 'number'; min: number; max?: number; exclusiveMin?: boolean; env?: string; doc: string }
  | { type: 'bool'; env?: string; doc: string }
  | { type: 'string'; maxLength?: number; env?: string; doc: string; secret?: boolean }
  | { type: 'enum'; values: readonly string[]; env?: string; doc: string; caseInsensitive?: boolean };

/** Sections with a fixed set of keys. `user_tiers` and `rate_limits` are per tier (below). */
export const FIXED_SECTIONS: Record<string, Record<string, FieldSpec>> = {
  service: {
    name: { type: 'string', maxLength: 100, doc: 'service name reported by /health' },
    port: { type: 'int', min: 1, max: 65535, env: 'RATE_LIMITING_API_PORT', doc: 'HTTP port' },
    host: { type: 'string', maxLength: 255, env: 'RATE_LIMITING_API_HOST', doc: 'address to listen on' },
    workers: { type: 'int', min: 1, max: 64, env: 'RATE_LIMITING_WORKERS', doc: 'worker processes per node' },
    node_id: { type: 'string', maxLength: 128, env: 'NODE_ID', doc: 'name of this node; empty = <hostname>-<port>' },
    decision_timeout: {
      type: 'number', min: 0, exclusiveMin: true, max: 60, env: 'RATE_LIMITING_DECISION_TIMEOUT',
      doc: 'seconds within which a decision must be answered (fractions allowed, e.g. 0.05)',
    },
  },
  redis: {
    endpoint: { type: 'string', maxLength: 1000, env: 'REDIS_ENDPOINT', doc: 'host:port of Redis; empty = in-memory only' },
    database: { type: 'int', min: 0, max: 15, env: 'REDIS_DATABASE', doc: 'Redis database number' },
    password: { type: 'string', maxLength: 1000, env: 'REDIS_PASSWORD', doc: 'Redis password', secret: true },
    connection_pool_size: { type: 'int', min: 1, max: 1000, env: 'REDIS_CONNECTION_POOL_SIZE', doc: 'Redis connections per worker' },
    connection_timeout: { type: 'number', min: 0, exclusiveMin: true, max: 600, env: 'REDIS_CONNECTION_TIMEOUT', doc: 'seconds to connect to Redis' },
    topology: { type: 'enum', values: ['standalone', 'sentinel', 'cluster'], env: 'REDIS_TOPOLOGY', doc: 'standalone server, Sentinel (endpoint lists the sentinels) or Redis Cluster (endpoint lists seed nodes)' },
    sentinel_master: { type: 'string', maxLength: 200, env: 'REDIS_SENTINEL_MASTER', doc: 'master name, with topology sentinel' },
    command_timeout: {
      type: 'number', min: 0, exclusiveMin: true, max: 60, env: 'REDIS_COMMAND_TIMEOUT',
      doc: 'seconds a Redis command may take (capped by the decision timeout)',
    },
    sync_interval_ms: { type: 'int', min: 5, max: 60_000, env: 'REDIS_SYNC_INTERVAL_MS', doc: 'how often memory is reconciled to Redis' },
    max_unsynced_evicted_users: {
      type: 'int', min: 0, max: 10_000_000, env: 'REDIS_MAX_UNSYNCED_EVICTED_USERS',
      doc: 'evicted users whose changes wait for Redis; beyond this, changes are dropped and counted',
    },
  },
  quota_management: {
    enabled: { type: 'bool', env: 'QUOTA_MANAGEMENT_ENABLED', doc: 'enforce the day quota' },
    overage_handling: {
      type: 'enum', values: ['block', 'allow', 'throttle'], env: 'QUOTA_OVERAGE_HANDLING',
      doc: 'what happens once the quota (and grace) is used up',
    },
    reset_interval: { type: 'int', min: 60, max: 31_536_000, env: 'QUOTA_RESET_INTERVAL', doc: 'quota window in seconds, aligned to the epoch' },
    grace_period: { type: 'int', min: 0, max: 31_536_000, env: 'QUOTA_GRACE_PERIOD', doc: 'seconds requests keep passing after the quota first runs out' },
  },
  api_key_management: {
    enabled: { type: 'bool', env: 'API_KEY_MANAGEMENT_ENABLED', doc: 'API keys as a way to identify callers' },
    generation_enabled: { type: 'bool', env: 'API_KEY_GENERATION_ENABLED', doc: 'admins may create keys' },
    validation_enabled: { type: 'bool', env: 'API_KEY_VALIDATION_ENABLED', doc: 'keys are validated on checks' },
    rotation_enabled: { type: 'bool', env: 'API_KEY_ROTATION_ENABLED', doc: 'admins may rotate keys' },
    rotation_overlap_seconds: {
      type: 'int', min: 0, max: 31_536_000, env: 'API_KEY_ROTATION_OVERLAP_SECONDS',
      doc: 'how long a rotated key stays valid when the rotation does not say',
    },
  },
  usage_analytics: {
    enabled: { type: 'bool', env: 'USAGE_ANALYTICS_ENABLED', doc: 'record usage history' },
    pattern_analysis_enabled: { type: 'bool', env: 'USAGE_PATTERN_ANALYSIS_ENABLED', doc: 'flag unusual usage' },
    reporting_enabled: { type: 'bool', env: 'USAGE_REPORTING_ENABLED', doc: 'serve usage reports' },
    retention_days: { type: 'int', min: 1, max: 36_500, env: 'USAGE_RETENTION_DAYS', doc: 'days hour and day rollups are kept' },
    minute_retention_hours: { type: 'int', min: 1, max: 8_760, env: 'USAGE_MINUTE_RETENTION_HOURS', doc: 'hours per-minute rows are kept' },
    flush_interval_ms: { type: 'int', min: 50, max: 600_000, env: 'USAGE_FLUSH_INTERVAL_MS', doc: 'how often a worker writes its usage aggregates' },
    max_buffered_rows: {
      type: 'int', min: 100, max: 10_000_000, env: 'USAGE_MAX_BUFFERED_ROWS',
      doc: 'usage rows a worker keeps while the database is away; beyond, the oldest are dropped and counted',
    },
    hold_open_minute: {
      type: 'bool', env: 'USAGE_HOLD_OPEN_MINUTE',
      doc: 'write each minute once, after it ends (analytics lag up to a minute); false writes the current minute at every flush',
    },
    write_spread_ms: {
      type: 'int', min: 0, max: 3_600_000, env: 'USAGE_WRITE_SPREAD_MS',
      doc: 'with hold_open_minute: an ended minute is written in equal parts over this long (a steady load on the database instead of a burst each minute); 0 writes it at once',
    },
  },
  performance: {
    memory_limit_gb: { type: 'number', min: 0, exclusiveMin: true, max: 1024, env: 'RATE_LIMITING_API_MEMORY_GB', doc: 'memory budget of a node' },
    cpu_cores: { type: 'int', min: 1, max: 256, env: 'RATE_LIMITING_API_CPU_CORES', doc: 'CPU budget of a node' },
    log_level: {
      type: 'enum', values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], caseInsensitive: true,
      env: 'LOG_LEVEL', doc: 'log level',
    },
  },
  monitoring: {
    api_gateway_endpoint: { type: 'string', maxLength: 1000, env: 'API_GATEWAY_ENDPOINT', doc: 'the gateway in front of this service (informational)' },
    sql_database_endpoint: { type: 'string', maxLength: 1000, env: 'SQL_DATABASE_ENDPOINT', doc: 'host:port of PostgreSQL; empty = embedded PGlite' },
    redis_endpoint: { type: 'string', maxLength: 1000, env: 'REDIS_ENDPOINT', doc: 'alias of redis.endpoint (the seed lists it twice)' },
    custom_metrics_endpoint: { type: 'string', maxLength: 1000, env: 'CUSTOM_METRICS_ENDPOINT', doc: 'Prometheus Pushgateway URL' },
    push_interval_seconds: { type: 'int', min: 1, max: 3600, env: 'CUSTOM_METRICS_PUSH_INTERVAL', doc: 'how often node metrics are pushed to the Pushgateway' },
  },
  database: {
    name: { type: 'string', maxLength: 63, env: 'SQL_DATABASE_NAME', doc: 'PostgreSQL database (with SQL_DATABASE_ENDPOINT)' },
    user: { type: 'string', maxLength: 63, env: 'SQL_DATABASE_USER', doc: 'PostgreSQL user' },
    password: { type: 'string', maxLength: 1000, env: 'SQL_DATABASE_PASSWORD', doc: 'PostgreSQL password', secret: true },
    ssl: { type: 'bool', env: 'SQL_DATABASE_SSL', doc: 'connect to PostgreSQL over TLS' },
    pool_size: { type: 'int', min: 1, max: 200, env: 'SQL_DATABASE_POOL_SIZE', doc: 'connections per process' },
    connection_timeout: { type: 'number', min: 0, exclusiveMin: true, max: 600, env: 'SQL_DATABASE_CONNECTION_TIMEOUT', doc: 'seconds to connect' },
    statement_timeout: { type: 'number', min: 0, exclusiveMin: true, max: 600, env: 'SQL_DATABASE_STATEMENT_TIMEOUT', doc: 'seconds a statement may take' },
    pglite_dir: { type: 'string', maxLength: 1000, env: 'PGLITE_DATA_DIR', doc: 'data directory of the embedded PGlite (no SQL_DATABASE_ENDPOINT); empty = data/pglite/<node id>; "memory" keeps nothing' },
  },
  admin: {
    token: { type: 'string', maxLength: 1000, env: 'ADMIN_TOKEN', doc: 'bearer token of the admin API; empty = admin API off', secret: true },
  },
  cluster: {
    peers: {
      type: 'string', maxLength: 10_000, env: 'CLUSTER_PEERS',
      doc: 'static membership: nodeId@host:apiPort, comma-separated (every node, this one included); empty = Redis registry, or this node alone without Redis',
    },
    secret: { type: 'string', maxLength: 500, env: 'CLUSTER_SECRET', doc: 'shared secret of peer calls; empty = taken from Redis (or per node without Redis)', secret: true },
    advertise_host: { type: 'string', maxLength: 255, env: 'ADVERTISE_HOST', doc: 'host peers use to reach this node; empty = 127.0.0.1, or the container address in Docker' },
    peer_port_offset: { type: 'int', min: 1, max: 60_000, env: 'CLUSTER_PEER_PORT_OFFSET', doc: 'worker i listens for peers on the API port + offset + i' },
    heartbeat_ms: { type: 'int', min: 50, max: 60_000, env: 'CLUSTER_HEARTBEAT_MS', doc: 'how often a worker renews its registry entry' },
    member_ttl_ms: { type: 'int', min: 100, max: 600_000, env: 'CLUSTER_MEMBER_TTL_MS', doc: 'a member missing heartbeats this long leaves the ring' },
    batch_limit: { type: 'int', min: 1, max: 10_000, env: 'CLUSTER_BATCH_LIMIT', doc: 'most checks in one forwarded batch' },
    batch_wait_us: { type: 'int', min: 0, max: 100_000, env: 'CLUSTER_BATCH_WAIT_US', doc: 'how long a forwarded check waits for company; 0 = the current event-loop turn' },
    max_batches_in_flight: {
      type: 'int', min: 0, max: 10_000, env: 'CLUSTER_MAX_BATCHES_IN_FLIGHT',
      doc: 'batches to one peer awaiting their answer at once; more checks queue and go as one batch when an answer arrives (0 = no limit)',
    },
    vnodes: { type: 'int', min: 1, max: 10_000, env: 'CLUSTER_VNODES', doc: 'virtual nodes per ring member' },
    health_interval_ms: { type: 'int', min: 10, max: 60_000, env: 'CLUSTER_HEALTH_INTERVAL_MS', doc: 'how often suspected peers are probed' },
  },
  limiter: {
    mode: { type: 'enum', values: ['local', 'redis'], env: 'RATE_LIMITING_MODE', doc: 'local: decide in memory, write behind to Redis; redis: every decision in Redis' },
    fallback_policy: {
      type: 'enum', values: ['local', 'allow', 'deny'], env: 'RATE_LIMITING_FALLBACK_POLICY',
      doc: 'when neither the owner\'s memory nor Redis can decide: a local bucket, allow, or deny',
    },
    max_users_in_memory: { type: 'int', min: 1000, max: 100_000_000, env: 'RATE_LIMITING_MAX_USERS_IN_MEMORY', doc: 'users kept in memory per node' },
    minute_ms: { type: 'int', min: 1000, max: 60_000, env: 'RATE_LIMITING_MINUTE_MS', doc: 'length of the minute window (benchmarks only)' },
    hour_ms: { type: 'int', min: 1000, max: 3_600_000, env: 'RATE_LIMITING_HOUR_MS', doc: 'length of the hour window (benchmarks only)' },
    max_cost: { type: 'int', min: 1, max: 1_000_000_000, env: 'RATE_LIMITING_MAX_COST', doc: 'largest cost of one check' },
  },
};

/** Keys of one tier under `rate_limits.<tier>`; the env name is `RATE_LIMIT_<TIER>_<SUFFIX>`. */
export const TIER_FIELDS: Record<string, FieldSpec & { envSuffix: string; optional?: boolean }> = {
  requests_per_minute: { type: 'int', min: 1, max: 1_000_000_000, envSuffix: 'REQUESTS_PER_MINUTE', doc: 'R: per clock minute, and the burst refill rate' },
  requests_per_hour: { type: 'int', min: 1, max: 1_000_000_000, envSuffix: 'REQUESTS_PER_HOUR', doc: 'per clock hour' },
  requests_per_day: { type: 'int', min: 1, max: 1_000_000_000, envSuffix: 'REQUESTS_PER_DAY', doc: 'the quota, per reset_interval' },
  burst_limit: { type: 'int', min: 1, max: 1_000_000_000, envSuffix: 'BURST_LIMIT', doc: 'B: back-to-back requests from rest' },
  throttle_requests_per_minute: {
    type: 'int', min: 1, max: 1_000_000_000, envSuffix: 'THROTTLE_REQUESTS_PER_MINUTE', optional: true,
    doc: 'per-minute rate after the quota runs out with overage_handling=throttle (default: 10% of R, at least 1)',
  },
};

/** Tier names: lower-case identifiers, so `RATE_LIMIT_<TIER>_…` is a valid variable name. */
export const TIER_NAME = /^[a-z][a-z0-9_]{0,31}$/;

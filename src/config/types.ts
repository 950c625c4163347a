/**
 * The validated configuration of one node. Keys mirror the seed's YAML file
 * (`config/rate-limiting-api.yaml`) so that one name is used everywhere: YAML key,
 * this type, the docs. Sections the seed does not have (`limiter`) hold what the
 * limiter itself needs; each key also has an environment variable (see `env.ts`).
 */
export type OverageHandling = 'block' | 'allow' | 'throttle';
export type DecisionMode = 'local' | 'redis';
export type FallbackPolicy = 'local' | 'allow' | 'deny';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface TierLimits {
  requests_per_minute: number;
  requests_per_hour: number;
  requests_per_day: number;
  burst_limit: number;
  /** Per-minute rate once the quota is exhausted and `overage_handling` is `throttle`. */
  throttle_requests_per_minute: number;
}

export interface Config {
  service: {
    name: string;
    port: number;
    host: string;
    workers: number;
    /** Empty = derived from the host name and port. */
    node_id: string;
    /** Seconds a caller may wait for a decision (RATE_LIMITING_DECISION_TIMEOUT). */
    decision_timeout: number;
  };
  /** `<tier>_enabled` for every tier in `rate_limits`, plus `default_tier`. */
  user_tiers: { [tierEnabled: string]: boolean | string; default_tier: string };
  rate_limits: Record<string, TierLimits>;
  redis: {
    endpoint: string;
    database: number;
    password: string;
    connection_pool_size: number;
    connection_timeout: number;
    topology: 'standalone' | 'sentinel' | 'cluster';
    sentinel_master: string;
    command_timeout: number;
    sync_interval_ms: number;
    max_unsynced_evicted_users: number;
  };
  quota_management: {
    enabled: boolean;
    overage_handling: OverageHandling;
    reset_interval: number;
    grace_period: number;
  };
  api_key_management: {
    enabled: boolean;
    generation_enabled: boolean;
    validation_enabled: boolean;
    rotation_enabled: boolean;
    rotation_overlap_seconds: number;
  };
  usage_analytics: {
    enabled: boolean;
    pattern_analysis_enabled: boolean;
    reporting_enabled: boolean;
    retention_days: number;
    minute_retention_hours: number;
    flush_interval_ms: number;
    max_buffered_rows: number;
    hold_open_minute: boolean;
    write_spread_ms: number;
  };
  performance: {
    memory_limit_gb: number;
    cpu_cores: number;
    log_level: string;
  };
  monitoring: {
    api_gateway_endpoint: string;
    sql_database_endpoint: string;
    redis_endpoint: string;
    custom_metrics_endpoint: string;
    push_interval_seconds: number;
  };
  database: {
    name: string;
    user: string;
    password: string;
    ssl: boolean;
    pool_size: number;
    connection_timeout: number;
    statement_timeout: number;
    pglite_dir: string;
  };
  admin: {
    token: string;
  };
  cluster: {
    peers: string;
    secret: string;
    advertise_host: string;
    peer_port_offset: number;
    heartbeat_ms: number;
    member_ttl_ms: number;
    batch_limit: number;
    batch_wait_us: number;
    max_batches_in_flight: number;
    vnodes: number;
    health_interval_ms: number;
  };
  limiter: {
    mode: DecisionMode;
    fallback_policy: FallbackPolicy;
    /** Upper bound of users held in memory by one node (split across its workers). */
    max_users_in_memory: number;
    /** Length of the "minute" window in ms; only the benchmark shortens it (see docs/semantics.md). */
    minute_ms: number;
    /** Length of the "hour" window in ms; only the benchmark shortens it. */
    hour_ms: number;
    /** Largest accepted `cost` of one check. */
    max_cost: number;
  };
}

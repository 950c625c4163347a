import type { Config, TierLimits } from './types.js';

/** Defaults before derived values: a tier's throttle rate follows its R unless set. */
export type DefaultConfig = Omit<Config, 'rate_limits'> & {
  rate_limits: Record<string, Omit<TierLimits, 'throttle_requests_per_minute'>>;
};

/** The seed's values, except addresses: nothing is contacted unless configured. */
export function defaultConfig(): DefaultConfig {
  return {
    service: { name: 'rate-limiting-api', port: 9098, host: '0.0.0.0', workers: 2, node_id: '', decision_timeout: 1 },
    user_tiers: { basic_enabled: true, premium_enabled: true, enterprise_enabled: true, default_tier: 'basic' },
    rate_limits: {
      basic: { requests_per_minute: 60, requests_per_hour: 1000, requests_per_day: 10000, burst_limit: 10 },
      premium: { requests_per_minute: 300, requests_per_hour: 5000, requests_per_day: 50000, burst_limit: 50 },
      enterprise: { requests_per_minute: 1000, requests_per_hour: 20000, requests_per_day: 200000, burst_limit: 200 },
    },
    redis: {
      endpoint: '', database: 0, password: '', connection_pool_size: 10, connection_timeout: 5,
      topology: 'standalone', sentinel_master: 'mymaster', command_timeout: 0.5, sync_interval_ms: 100, max_unsynced_evicted_users: 100_000,
    },
    quota_management: { enabled: true, overage_handling: 'block', reset_interval: 86400, grace_period: 300 },
    api_key_management: { enabled: true, generation_enabled: true, validation_enabled: true, rotation_enabled: true, rotation_overlap_seconds: 86_400 },
    usage_analytics: {
      enabled: true, pattern_analysis_enabled: true, reporting_enabled: true, retention_days: 90,
      minute_retention_hours: 48, flush_interval_ms: 5000, max_buffered_rows: 200_000, hold_open_minute: true,
      write_spread_ms: 50_000,
    },
    performance: { memory_limit_gb: 1, cpu_cores: 2, log_level: 'INFO' },
    monitoring: { api_gateway_endpoint: '', sql_database_endpoint: '', redis_endpoint: '', custom_metrics_endpoint: '', push_interval_seconds: 15 },
    database: {
      name: 'rate_limiting', user: 'postgres', password: '', ssl: false, pool_size: 10, connection_timeout: 5, statement_timeout: 5,
      pglite_dir: '',
    },
    admin: { token: '' },
    cluster: {
      peers: '', secret: '', advertise_host: '', peer_port_offset: 1000, heartbeat_ms: 1000, member_ttl_ms: 3000,
      batch_limit: 1000, batch_wait_us: 0, max_batches_in_flight: 1, vnodes: 160, health_interval_ms: 250,
    },
    limiter: { mode: 'local', fallback_policy: 'local', max_users_in_memory: 1_000_000, minute_ms: 60_000, hour_ms: 3_600_000, max_cost: 1_000_000 },
  };
}

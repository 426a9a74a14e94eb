//! Counters on Redis, shared by every replica: one Lua script decides and charges all checks of
//! a request atomically (one round trip), on Redis's clock so replicas' clocks do not matter.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::{status_of, Adjust, Backend, Check, Decision, Dimension, LimitError};

/// Mirrors `gcra_step` and the concurrency rule of the memory backend. Numbers are Lua doubles:
/// microsecond timestamps stay exact (below 2^53).
const ACQUIRE: &str = r"
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local n = #KEYS
local nxt = {}
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local kind = ARGV[b + 1]
  local interval = tonumber(ARGV[b + 2])
  local period = tonumber(ARGV[b + 3])
  local amount = tonumber(ARGV[b + 4])
  local cost = tonumber(ARGV[b + 5])
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  if kind == 'c' then
    if cur + cost > amount then
      local imp = 0
      if cost > amount then imp = 1 end
      return {0, i, 1000000, imp}
    end
    nxt[i] = cur + cost
  else
    local inc = interval * cost
    local tat = math.max(cur, now) + inc
    if tat - now > period then
      local imp = 0
      if inc > period then imp = 1 end
      return {0, i, string.format('%.0f', tat - now - period), imp}
    end
    nxt[i] = tat
  end
end
local out = {1, string.format('%.0f', now)}
for i = 1, n do
  local kind = ARGV[1 + (i - 1) * 5 + 1]
  local v = string.format('%.0f', nxt[i])
  if kind == 'c' then
    redis.call('SET', KEYS[i], v, 'EX', 3600)
  else
    redis.call('SET', KEYS[i], v, 'PX', math.floor((nxt[i] - now) / 1000) + 1)
  end
  out[#out + 1] = v
end
return out
";

/// Corrections after the fact, all keys in one call: per key, ARGV holds kind, interval, amount
/// and `charge` (charge without asking) or `release` (give back).
const ADJUST: &str = r"
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 4
  local kind = ARGV[b + 1]
  local interval = tonumber(ARGV[b + 2])
  local amount = tonumber(ARGV[b + 3])
  local how = ARGV[b + 4]
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  if how == 'charge' then
    if kind == 'c' then
      redis.call('SET', KEYS[i], string.format('%.0f', cur + amount), 'EX', 3600)
    else
      local tat = math.max(cur, now) + interval * amount
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
    end
  elseif kind == 'c' then
    local left = cur - amount
    if left <= 0 then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', left), 'KEEPTTL')
    end
  else
    local back = cur - interval * amount
    if back <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', back), 'PX', math.floor((back - now) / 1000) + 1)
    end
  end
end
return #KEYS
";

/// Counters in Redis under `palisade:limit:`.
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    acquire: redis::Script,
    adjust: redis::Script,
    prefix: String,
}

fn unavailable(e: impl std::fmt::Display) -> LimitError {
    LimitError::Unavailable(e.to_string())
}

impl RedisBackend {
    /// Connects (and reconnects on its own later) to `url`, e.g. `redis://127.0.0.1:6379`.
    pub async fn connect(url: &str) -> Result<RedisBackend, LimitError> {
        Self::connect_with_prefix(url, "palisade:limit:").await
    }

    /// As [`connect`](Self::connect) with another key prefix (tests, several deployments on one
    /// Redis).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<RedisBackend, LimitError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
            .await
            .map_err(|_| LimitError::Unavailable("connecting to Redis timed out".into()))?
            .map_err(unavailable)?;
        Ok(RedisBackend {
            conn,
            acquire: redis::Script::new(ACQUIRE),
            adjust: redis::Script::new(ADJUST),
            prefix: prefix.to_string(),
        })
    }
}

fn kind(c: &Check) -> &'static str {
    match c.dimension {
        Dimension::Concurrent => "c",
        _ => "r",
    }
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    async fn acquire(&self, checks: &[Check], now_us: Option<u64>) -> Result<Decision, LimitError> {
        let mut inv = self.acquire.prepare_invoke();
        inv.arg(now_us.map(|n| n.to_string()).unwrap_or_default());
        for c in checks {
            let (interval, period) = c.gcra();
            inv.key(format!("{}{}", self.prefix, c.key))
                .arg(kind(c))
                .arg(interval)
                .arg(period)
                .arg(c.amount)
                .arg(c.cost);
        }
        let mut conn = self.conn.clone();
        let asked = std::time::Instant::now();
        let out = inv.invoke_async::<Vec<redis::Value>>(&mut conn).await;
        observe("limits_acquire", asked);
        let out = out.map_err(unavailable)?;
        let num = |v: Option<&redis::Value>| -> u64 {
            match v {
                Some(redis::Value::Int(i)) => u64::try_from(*i).unwrap_or(0),
                Some(redis::Value::BulkString(b)) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                Some(redis::Value::SimpleString(s)) => s.parse().unwrap_or(0),
                _ => 0,
            }
        };
        if num(out.first()) == 0 {
            let i = usize::try_from(num(out.get(1)))
                .unwrap_or(1)
                .saturating_sub(1);
            let c = checks
                .get(i)
                .ok_or_else(|| LimitError::Unavailable("unexpected script answer".into()))?;
            return Ok(Decision::Denied {
                index: i,
                key: c.key.clone(),
                amount: c.amount,
                retry_after: Duration::from_micros(num(out.get(2))),
                impossible: num(out.get(3)) == 1,
            });
        }
        let now = num(out.get(1));
        let statuses = checks
            .iter()
            .enumerate()
            .map(|(i, c)| status_of(c, num(out.get(i + 2)), now))
            .collect();
        Ok(Decision::Allowed(statuses))
    }

    async fn ping(&self) -> Option<bool> {
        let mut conn = self.conn.clone();
        let asked = std::time::Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        observe("ping", asked);
        Some(matches!(answer, Ok(Ok(ref pong)) if pong == "PONG"))
    }

    async fn adjust(&self, changes: &[Adjust], now_us: Option<u64>) -> Result<(), LimitError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut inv = self.adjust.prepare_invoke();
        inv.arg(now_us.map(|n| n.to_string()).unwrap_or_default());
        for a in changes {
            let (interval, _) = a.check.gcra();
            inv.key(format!("{}{}", self.prefix, a.check.key))
                .arg(kind(&a.check))
                .arg(interval)
                .arg(a.amount)
                .arg(if a.charge { "charge" } else { "release" });
        }
        let mut conn = self.conn.clone();
        let asked = std::time::Instant::now();
        let out = inv.invoke_async::<i64>(&mut conn).await;
        observe("limits_adjust", asked);
        out.map_err(unavailable)?;
        Ok(())
    }
}

/// One Redis round trip's latency (answered or failed), for `palisade_redis_command_duration_seconds`.
fn observe(op: &'static str, asked: std::time::Instant) {
    metrics::histogram!("palisade_redis_command_duration_seconds", "op" => op)
        .record(asked.elapsed().as_secs_f64());
}

-- wrk reports its summary as scalelab metric lines (one JSON object per line), per client:
-- its request rate and bytes per second (summed over clients by the report: the total the
-- server delivered), its request count, its latency percentiles (percentiles over clients)
-- and its errors.
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format('{"metric": "wrk_request_rate", "value": %f, "unit": "req/s", "agg": "sum"}\n',
                         summary.requests / seconds))
  io.write(string.format('{"metric": "wrk_transfer_rate", "value": %f, "unit": "B/s", "agg": "sum"}\n',
                         summary.bytes / seconds))
  io.write(string.format('{"metric": "wrk_requests", "value": %d, "unit": "req", "agg": "sum"}\n',
                         summary.requests))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format('{"metric": "wrk_latency_p%d", "value": %f, "unit": "s"}\n',
                           p, latency:percentile(p) / 1e6))
  end
  io.write(string.format('{"metric": "wrk_errors", "value": %d, "unit": "req", "agg": "sum"}\n',
                         e.connect + e.read + e.write + e.status + e.timeout))
end

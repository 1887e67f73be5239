// A peer for `make bench`: Microsoft's Graph JavaScript client on Node,
// syncing the given tokens with a fixed number in flight.
// Usage: node graph-client.mjs BASE_URL IDS_FILE CONCURRENCY
// Prints {"elapsed":s,"cpu":s,"ok":n,"failed":n} as JSON.
import { readFileSync } from "node:fs";
import { Client } from "@microsoft/microsoft-graph-client";

const [base, idsFile, concurrencyArg] = process.argv.slice(2);
const ids = readFileSync(idsFile, "utf8").split("\n").filter(Boolean);
const concurrency = Number(concurrencyArg);
const client = Client.init({
  baseUrl: base + "/",
  defaultVersion: "v1.0",
  customHosts: new Set([new URL(base).hostname]), // else it sends no token
  authProvider: (done) => done(null, "bench-token"),
});

let next = 0, ok = 0, failed = 0;
async function worker() {
  while (next < ids.length) {
    const id = ids[next++];
    try {
      await client.api(`/deviceAppManagement/vppTokens/${id}/syncLicenses`).post();
      ok++;
    } catch (e) {
      failed++;
      if (failed === 1) console.error(String(e && e.message));
    }
  }
}

const cpu0 = process.cpuUsage();
const t0 = performance.now();
await Promise.all(Array.from({ length: concurrency }, worker));
const elapsed = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
console.log(JSON.stringify({ elapsed, cpu: (cpu.user + cpu.system) / 1e6, ok, failed }));

// Verifies one authproxy callback request with the hosted product's own SDK verifier
// (langsmith SandboxTokenVerifier.verifyCallback, SPEC §4).
// stdin: {"jwks_url", "signature", "body_base64", "aud"}; stdout: one JSON line
// {"ok": true, "payload": ...} or {"ok": false, "error": "..."}.
import { SandboxTokenVerifier } from "langsmith/sandbox";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const req = JSON.parse(input);
const verifier = new SandboxTokenVerifier({ jwksUrl: req.jwks_url, allowInsecureJwks: true });
try {
  const payload = await verifier.verifyCallback({
    body: Buffer.from(req.body_base64, "base64"),
    signature: req.signature,
    aud: req.aud,
  });
  console.log(JSON.stringify({ ok: true, payload }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: `${e.name}: ${e.message}` }));
}

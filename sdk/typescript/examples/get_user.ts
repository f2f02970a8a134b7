/**
 * Calls Jisu from Node with the SDK: mTLS from a certificates directory, a token, default
 * deadlines and a typed error.
 *
 *   JISU_TOKEN=$(jisu token issue --sub alice --scope users:read) \
 *     node dist/examples/get_user.js https://localhost:50051 ../../certs USER0001
 */
import { Code, JisuError, connect } from "../src/index.js";

const [baseUrl = "https://localhost:50051", certs = "certs", userId = "USER0001"] = process.argv.slice(2);
const jisu = connect(baseUrl, { certs, token: process.env.JISU_TOKEN ?? "" });
try {
  const user = await jisu.getUser(userId);
  console.log(user.id, user.name, user.email);
} catch (error) {
  if (!(error instanceof JisuError)) throw error;
  console.error(`${Code[error.code]} ${error.reason}: ${error.rawMessage} (trace ${error.traceId})`);
  process.exitCode = 1;
}

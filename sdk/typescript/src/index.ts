/**
 * Jisu's TypeScript/Node SDK: the types protoc-gen-es makes of `jisucloud.v1` (int64 as
 * bigint, real message and enum types; under `./gen`) over a gRPC transport for Node
 * (`@connectrpc/connect-node`), and a thin helper:
 *
 * - {@link connect} opens an mTLS HTTP/2 connection from a certificates directory and
 *   sends a bearer token on every call, fixed or from a {@link TokenSource} that
 *   refreshes it before it expires;
 * - every call has a default deadline unless it passes its own `timeoutMs`;
 * - {@link JisuError} carries the gRPC code, the `google.rpc.ErrorInfo` reason, the
 *   `BadRequest` field violations and the trace id of a failure;
 * - {@link Jisu.listAllUsers} follows ListUsers pages (the `x-next-page-token` trailer).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, type Interceptor, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { FileService } from "./gen/jisucloud/v1/files_pb.js";
import { OrderService } from "./gen/jisucloud/v1/orders_pb.js";
import { GetUserRequestSchema, ListUsersRequestSchema, type User, UserService } from "./gen/jisucloud/v1/users_pb.js";

export * as files from "./gen/jisucloud/v1/files_pb.js";
export * as orders from "./gen/jisucloud/v1/orders_pb.js";
export * as users from "./gen/jisucloud/v1/users_pb.js";
export { Code } from "@connectrpc/connect";

/** Trailing metadata of ListUsers: the `page_token` of the next page. */
export const NEXT_PAGE_TOKEN = "x-next-page-token";
/** Metadata of every response: the call's trace id (32 hex digits). */
export const TRACE_ID = "x-trace-id";

/**
 * A bearer token fetched again shortly before it expires. `fetch` resolves to
 * `[token, expiresAt]`, `expiresAt` in Unix seconds (the token's `exp`).
 */
export class TokenSource {
  private current: Promise<[string, number]> | undefined;

  constructor(
    private readonly fetch: () => Promise<[string, number]> | [string, number],
    private readonly marginSeconds = 30,
  ) {}

  async token(): Promise<string> {
    const now = Date.now() / 1000;
    if (this.current === undefined || (await this.current)[1] - this.marginSeconds <= now) {
      this.current = Promise.resolve(this.fetch());
    }
    return (await this.current)[0];
  }
}

/** One invalid request field (`google.rpc.BadRequest.FieldViolation`). */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call, with what the server said about it. */
export class JisuError extends Error {
  constructor(
    readonly code: Code,
    readonly rawMessage: string,
    readonly reason: string,
    readonly domain: string,
    readonly fieldViolations: FieldViolation[],
    readonly traceId: string,
  ) {
    super(`${Code[code]}${reason ? ` [${reason}]` : ""}: ${rawMessage}${traceId ? ` (trace ${traceId})` : ""}`);
    this.name = "JisuError";
  }

  /** Reads a `ConnectError` (anything else becomes UNKNOWN). */
  static from(error: unknown): JisuError {
    const e = ConnectError.from(error);
    const info = e.findDetails(ErrorInfoSchema)[0];
    const violations = e
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    return new JisuError(
      e.code,
      e.rawMessage,
      info?.reason ?? "",
      info?.domain ?? "",
      violations,
      e.metadata.get(TRACE_ID) ?? "",
    );
  }
}

/** How to reach Jisu. */
export interface ConnectOptions {
  /** A directory with `ca.pem` and the client's `<name>.pem` / `<name>.key`. */
  certs: string;
  /** The client certificate's file name (default `client`). */
  name?: string;
  /** A bearer token, or a source that refreshes it. */
  token: string | TokenSource;
  /** Deadline of calls that set none (default 10 s). */
  timeoutMs?: number;
  /** The name to verify the server certificate against (default: the URL's host). */
  serverName?: string;
}

/** A connection to Jisu: the typed clients plus conveniences. */
export class Jisu {
  readonly users: Client<typeof UserService>;
  readonly orders: Client<typeof OrderService>;
  readonly files: Client<typeof FileService>;

  constructor(transport: ReturnType<typeof createGrpcTransport>) {
    this.users = createClient(UserService, transport);
    this.orders = createClient(OrderService, transport);
    this.files = createClient(FileService, transport);
  }

  /** GetUser, throwing {@link JisuError} on failure. */
  async getUser(userId: string, timeoutMs?: number): Promise<User> {
    try {
      return await this.users.getUser(create(GetUserRequestSchema, { userId }), { timeoutMs });
    } catch (error) {
      throw JisuError.from(error);
    }
  }

  /** Every user (optionally of one status), page after page. */
  async *listAllUsers(pageSize = 100, status = ""): AsyncGenerator<User> {
    let pageToken = "";
    for (;;) {
      let next = "";
      try {
        const stream = this.users.listUsers(create(ListUsersRequestSchema, { pageSize, pageToken, status }), {
          onTrailer: (trailers) => {
            next = trailers.get(NEXT_PAGE_TOKEN) ?? "";
          },
        });
        for await (const user of stream) {
          yield user;
        }
      } catch (error) {
        throw JisuError.from(error);
      }
      if (!next) {
        return;
      }
      pageToken = next;
    }
  }
}

/**
 * Connects to `baseUrl` (`https://host:port`) over mutual TLS. TLS failures surface as
 * UNAVAILABLE on the first call: a server certificate that does not chain to `ca.pem`
 * or does not name the host ("self-signed certificate in certificate chain", "Hostname/IP
 * does not match": pass `serverName`), or a client certificate the server refuses
 * ("tlsv13 alert certificate required/unknown ca/certificate revoked").
 */
export function connect(baseUrl: string, options: ConnectOptions): Jisu {
  const name = options.name ?? "client";
  const token = options.token;
  const bearer: Interceptor = (next) => async (req) => {
    const value = typeof token === "string" ? token : await token.token();
    req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
  const transport = createGrpcTransport({
    baseUrl,
    interceptors: [bearer],
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
    nodeOptions: {
      ca: readFileSync(join(options.certs, "ca.pem")),
      cert: readFileSync(join(options.certs, `${name}.pem`)),
      key: readFileSync(join(options.certs, `${name}.key`)),
      ...(options.serverName ? { servername: options.serverName } : {}),
    },
  });
  return new Jisu(transport);
}

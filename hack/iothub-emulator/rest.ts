/**
 * The service side of the emulator: IoT Hub's REST API over HTTPS (the api-version 2021-04-12 paths
 * the service SDK and devicelet call), authenticated by `Authorization: SharedAccessSignature …`
 * signed with a shared access policy key (401 otherwise).
 *
 * - `PUT|GET|DELETE /devices/{id}`: identities (PUT without `If-Match` creates, 409 if it exists);
 *   `authentication.type` `sas` (keys), `selfSigned` (`x509Thumbprint`) or `certificateAuthority`,
 *   inferred as the service SDK does when absent (a thumbprint: `selfSigned`, else `sas`).
 * - `GET /twins/{id}`, `PATCH /twins/{id}`: tags and desired properties; `If-Match` with the twin
 *   etag or `*` (absent = `*`); 412 on a stale etag.
 * - `POST /devices/query`: `SELECT * FROM devices [WHERE a.b = literal [AND …]]` and
 *   `deviceId IN [...]`; pages by `x-ms-max-item-count` (default 100, at most 100) and
 *   `x-ms-continuation`.
 * - `POST /twins/{id}/methods`: direct method, `responseTimeoutInSeconds` 5–300 (default 30).
 * Errors: the status, header `iothub-errorcode`, body `{"Message":"ErrorCode:{code};{message}"}`.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { HubError, type AuthenticationChange, type Hub, type OperationClass } from "./hub.ts";
import { isObject, type Json, type JsonObject } from "./twin.ts";

export interface ServiceEndpoint {
  readonly port: number;
  close(): Promise<void>;
}

export async function startServiceEndpoint(o: {
  hub: Hub;
  host: string;
  port: number;
  cert: string;
  key: string;
}): Promise<ServiceEndpoint> {
  const server = https.createServer({ cert: o.cert, key: o.key }, (req, res) => {
    handle(o.hub, req, res).catch((error: unknown) => {
      const e = error instanceof HubError ? error : new HubError(500, "ServerError", String(error));
      sendError(res, e);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function handle(hub: Hub, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await readBody(req);
  if (!hub.authenticateService(req.headers.authorization ?? "")) {
    throw new HubError(
      401,
      "IotHubUnauthorizedAccess",
      "the SharedAccessSignature is missing, invalid or expired",
    );
  }
  const url = new URL(req.url ?? "/", "https://hub");
  const parts = url.pathname
    .split("/")
    .filter((p) => p !== "")
    .map(decodeURIComponent);
  const ifMatch = header(req, "if-match") ?? "*";
  const method = req.method ?? "GET";
  const run = (kind: OperationClass) => hub.consume(kind, "service");

  if (parts[0] === "devices" && parts[1] === "query" && parts.length === 2 && method === "POST") {
    run("query");
    const page = query(hub, {
      sql: isObject(body) && typeof body.query === "string" ? body.query : "",
      maxItems: Math.min(100, Number(header(req, "x-ms-max-item-count") ?? 100) || 100),
      continuation: header(req, "x-ms-continuation"),
    });
    const headers: Record<string, string> = { "x-ms-item-type": "Twin" };
    if (page.continuation !== undefined) headers["x-ms-continuation"] = page.continuation;
    send(res, 200, page.items, headers);
    return;
  }
  const [collection, deviceId, sub] = parts;
  if (deviceId === undefined || parts.length > 3)
    throw new HubError(404, "NotFound", `no route ${url.pathname}`);
  if (collection === "devices" && sub === undefined) {
    run("registry");
    if (method === "GET") {
      send(res, 200, hub.identity(deviceId));
      return;
    }
    if (method === "DELETE") {
      hub.deleteDevice(deviceId, ifMatch);
      send(res, 204, undefined);
      return;
    }
    if (method === "PUT") {
      const keys = authenticationChange(isObject(body) ? body.authentication : undefined);
      const status =
        isObject(body) && (body.status === "enabled" || body.status === "disabled") ? body.status : undefined;
      if (header(req, "if-match") === undefined) {
        hub.createDevice(deviceId, keys);
        if (status !== undefined) hub.updateDevice(deviceId, { status }, "*");
        send(res, 200, hub.identity(deviceId));
        return;
      }
      send(
        res,
        200,
        hub.updateDevice(deviceId, { ...keys, ...(status === undefined ? {} : { status }) }, ifMatch),
      );
      return;
    }
  }
  if (collection === "twins" && sub === undefined) {
    if (method === "GET") {
      run("twinRead");
      send(res, 200, hub.twin(deviceId));
      return;
    }
    if (method === "PATCH") {
      run("twinUpdate");
      if (!isObject(body)) throw new HubError(400, "ArgumentInvalid", "the body is not a JSON object");
      send(res, 200, hub.patchTwin(deviceId, body, ifMatch));
      return;
    }
  }
  if (collection === "twins" && sub === "methods" && method === "POST") {
    run("methods");
    if (!isObject(body) || typeof body.methodName !== "string" || body.methodName === "") {
      throw new HubError(400, "ArgumentInvalid", "methodName is required");
    }
    const timeout = typeof body.responseTimeoutInSeconds === "number" ? body.responseTimeoutInSeconds : 30;
    if (timeout < 5 || timeout > 300)
      throw new HubError(400, "ArgumentInvalid", "responseTimeoutInSeconds must be 5 to 300");
    const answer = await hub.invokeMethod(deviceId, {
      methodName: body.methodName,
      payload: body.payload ?? null,
      responseTimeoutInSeconds: timeout,
    });
    send(res, 200, { status: answer.status, payload: answer.payload });
    return;
  }
  throw new HubError(405, "MethodNotAllowed", `${method} ${url.pathname} is not supported`);
}

/** The registry body's `authentication` as a change: only what it sets (empty strings are unset). */
function authenticationChange(authentication: Json | undefined): AuthenticationChange {
  if (!isObject(authentication)) return {};
  const text = (section: Json | undefined, key: string): Record<string, string> => {
    const value = isObject(section) ? section[key] : undefined;
    return typeof value === "string" && value !== "" ? { [key]: value } : {};
  };
  const { symmetricKey, x509Thumbprint, type } = authentication;
  const thumbprints = {
    ...text(x509Thumbprint, "primaryThumbprint"),
    ...text(x509Thumbprint, "secondaryThumbprint"),
  };
  let kind: AuthenticationChange["type"];
  if (type === "sas" || type === "selfSigned" || type === "certificateAuthority") kind = type;
  else if (type !== undefined && type !== null)
    throw new HubError(
      400,
      "ArgumentInvalid",
      `authentication.type ${JSON.stringify(type)} is not supported`,
    );
  else kind = Object.keys(thumbprints).length > 0 ? "selfSigned" : undefined;
  return {
    ...(kind === undefined ? {} : { type: kind }),
    ...text(symmetricKey, "primaryKey"),
    ...text(symmetricKey, "secondaryKey"),
    ...thumbprints,
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

async function readBody(req: IncomingMessage): Promise<Json | undefined> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString("utf8");
  if (text === "") return undefined;
  try {
    return JSON.parse(text) as Json;
  } catch {
    throw new HubError(400, "ArgumentInvalid", "the body is not JSON");
  }
}

function send(
  res: ServerResponse,
  status: number,
  body: Json | undefined,
  headers: Record<string, string> = {},
): void {
  if (body === undefined) {
    res.writeHead(status, headers).end();
    return;
  }
  res
    .writeHead(status, { ...headers, "content-type": "application/json; charset=utf-8" })
    .end(JSON.stringify(body));
}

function sendError(res: ServerResponse, e: HubError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  send(
    res,
    e.status,
    { Message: `ErrorCode:${e.code};${e.message}`, ExceptionMessage: "" },
    { "iothub-errorcode": e.code },
  );
}

// --- query ----------------------------------------------------------------------------------------

type Condition = (twin: JsonObject) => boolean;

/** Parses the subset of the IoT Hub query language the emulator answers; 400 for anything else. */
function parseQuery(sql: string): Condition {
  const match = /^\s*SELECT\s+\*\s+FROM\s+devices(?:\s+WHERE\s+(.+?))?\s*$/is.exec(sql);
  if (match === null) throw new HubError(400, "BadRequest", `unsupported query: ${sql}`);
  const where = match[1];
  if (where === undefined) return () => true;
  const conditions = where.split(/\s+AND\s+/i).map((clause): Condition => {
    const inList = /^([A-Za-z0-9_.]+)\s+IN\s+\[(.*)\]$/i.exec(clause.trim());
    if (inList !== null) {
      const path = inList[1] ?? "";
      const values = (inList[2] ?? "").split(",").map((v) => literal(v.trim()));
      return (twin) => values.some((v) => v === lookup(twin, path));
    }
    const equal = /^([A-Za-z0-9_.]+)\s*(=|!=|<>)\s*(.+)$/.exec(clause.trim());
    if (equal === null) throw new HubError(400, "BadRequest", `unsupported condition: ${clause}`);
    const path = equal[1] ?? "";
    const value = literal(equal[3] ?? "");
    return equal[2] === "=" ? (twin) => lookup(twin, path) === value : (twin) => lookup(twin, path) !== value;
  });
  return (twin) => conditions.every((c) => c(twin));
}

function literal(text: string): Json {
  const quoted = /^'(.*)'$/s.exec(text);
  if (quoted !== null) return (quoted[1] ?? "").replace(/''/g, "'");
  if (text === "true" || text === "false") return text === "true";
  if (text === "null") return null;
  const n = Number(text);
  if (text !== "" && Number.isFinite(n)) return n;
  throw new HubError(400, "BadRequest", `unsupported literal: ${text}`);
}

function lookup(twin: JsonObject, path: string): Json | undefined {
  let value: Json | undefined = twin;
  for (const key of path.split(".")) value = isObject(value) ? value[key] : undefined;
  return value;
}

/** One page of query results; the continuation token is the offset of the next page. */
function query(hub: Hub, o: { sql: string; maxItems: number; continuation: string | undefined }) {
  const condition = parseQuery(o.sql);
  const start =
    o.continuation === undefined ? 0 : Number(Buffer.from(o.continuation, "base64").toString("utf8"));
  if (!Number.isSafeInteger(start) || start < 0)
    throw new HubError(400, "BadRequest", "invalid continuation token");
  const matches = hub
    .deviceIds()
    .sort()
    .map((id) => hub.twin(id))
    .filter(condition);
  const items = matches.slice(start, start + o.maxItems);
  const next = start + items.length;
  return {
    items,
    continuation: next < matches.length ? Buffer.from(String(next)).toString("base64") : undefined,
  };
}

/**
 * The real `azure-iothub` service SDK pointed at the emulator. The SDK always connects to port 443
 * of its `HostName` and offers no way to trust another CA (its `Registry` and `Client` replace the
 * HTTP options with their own keep-alive agent), so this gives them, through their public
 * `restApiClient` constructor parameter, the SDK's own REST client whose requests go to the
 * emulator's address and port and trust its CA. Everything above the socket is the SDK's own code:
 * paths, headers, `If-Match`, SAS, query paging, error translation.
 */
import https from "node:https";
import iothub from "azure-iothub";
import httpModule from "azure-iothub/dist/common-http/http.js";
import restModule from "azure-iothub/dist/common-http/rest_api_client.js";
import type { IotHubEmulator } from "./index.ts";
import { encodeTwinDocument, IOTHUB_MAPPING } from "../../src/protocol/iothub-twin.ts";

// CommonJS modules: their exports are read from the default import.
const { Registry, Client } = iothub;
const { Http } = httpModule;
const { RestApiClient } = restModule;
type Registry = iothub.Registry;
type Client = iothub.Client;
type RestApiClient = restModule.RestApiClient;

type BuildRequest = httpModule.Http["buildRequest"];

class EmulatorHttp extends Http {
  readonly #target: { host: string; port: number; ca: string; servername: string };
  constructor(target: { host: string; port: number; ca: string; servername: string }) {
    super();
    this.#target = target;
  }
  override buildRequest(...args: Parameters<BuildRequest>): ReturnType<BuildRequest> {
    const [method, path, headers, host, optionsOrDone, maybeDone] = args;
    const done = typeof optionsOrDone === "function" ? optionsOrDone : maybeDone;
    const target = this.#target;
    const request = (
      options: https.RequestOptions,
      callback: (res: import("node:http").IncomingMessage) => void,
    ) =>
      https.request(
        { ...options, host: target.host, port: target.port, ca: target.ca, servername: target.servername },
        callback,
      );
    return super.buildRequest(method, path, headers, host, { port: target.port, request } as never, done);
  }
}

function restClient(emulator: IotHubEmulator): {
  config: { host: string; sharedAccessSignature: string };
  rest: RestApiClient;
} {
  const url = new URL(emulator.serviceUrl);
  const config = { host: emulator.hostName, sharedAccessSignature: emulator.serviceToken() };
  const http = new EmulatorHttp({
    host: url.hostname,
    port: Number(url.port),
    ca: emulator.ca,
    servername: emulator.hostName,
  });
  return { config, rest: new RestApiClient(config, "devicelet-iothub-emulator", http) };
}

/** A real `Registry` talking to the emulator. */
export function emulatorRegistry(emulator: IotHubEmulator): Registry {
  const { config, rest } = restClient(emulator);
  return new Registry(config, rest);
}

/**
 * A real service `Client` for direct methods (`invokeDeviceMethod`). Its AMQP transport (cloud-to-
 * device messages, feedback) is not emulated: do not `open()` it.
 */
export function emulatorServiceClient(emulator: IotHubEmulator): Client {
  const { rest } = restClient(emulator);
  const amqpUnused = { on: () => undefined } as unknown as iothub.Client.Transport;
  return new Client(amqpUnused, rest);
}

/**
 * Writes devicelet's desired document into a device's twin as devicelet does: conditional on the
 * etag just read, read again after a 412 (the device's own reported writes, a heartbeat say,
 * change the etag too), at most five times.
 */
export async function writeDesiredText(registry: Registry, deviceId: string, text: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const twin = (await registry.getTwin(deviceId)).responseBody;
    const previous = (twin.properties.desired as Record<string, { n?: number } | undefined>)[
      IOTHUB_MAPPING.desiredKey
    ];
    const value = encodeTwinDocument(text, previous?.n ?? 0);
    try {
      await registry.updateTwin(
        deviceId,
        { properties: { desired: { [IOTHUB_MAPPING.desiredKey]: value } } },
        twin.etag,
      );
      return;
    } catch (err) {
      if ((err as Error).name !== "InvalidEtagError" || attempt === 5) throw err;
    }
  }
}

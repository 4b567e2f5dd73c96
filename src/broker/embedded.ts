/**
 * The embedded MQTT broker of the one-command demo: aedes on a loopback port, in this process,
 * with in-memory persistence. It speaks MQTT 3.1.1 only, which the device protocol is designed to
 * work with; production uses a real broker (Mosquitto, EMQX, HiveMQ, ...).
 *
 *   const broker = await startEmbeddedBroker({ port: 0 });
 *   broker.url; // mqtt://127.0.0.1:PORT
 *   await broker.close();
 */
import net from "node:net";
import { Aedes } from "aedes";

export interface EmbeddedBroker {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

export async function startEmbeddedBroker(
  options: { port?: number; host?: string } = {},
): Promise<EmbeddedBroker> {
  const host = options.host ?? "127.0.0.1";
  const aedes = await Aedes.createBroker();
  const server = net.createServer((socket) => aedes.handle(socket));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    url: `mqtt://${host}:${port}`,
    port,
    close: async () => {
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

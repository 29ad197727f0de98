/**
 * The headers of a broker message as the bus takes them. Shared by the Redis, RabbitMQ and MQTT
 * sources; its place is beside the other delivery helpers in runtime/sources once that is free to
 * change, and it imports nothing of a broker's client, so a connector that uses it loads no other.
 */
import { checkHeaders, type Headers } from '../../runtime/envelope.ts';
import { ConnectorError } from '../../runtime/errors.ts';

/**
 * `headers` checked for the bus, or, when it refuses a name, a `ConnectorError` of `source` naming
 * `what` (the message) and the names, which are deleted from `headers`: a message whose header the
 * bus refuses is refused at every delivery, so it is dead-lettered at once, and its dead letter,
 * which carries its headers, must leave them out to be taken.
 */
export function busHeaders(headers: Record<string, string>, source: string, what: string): Headers | ConnectorError {
  try {
    return checkHeaders(headers, `${source}.headers`);
  } catch {
    const refused = Object.keys(headers).filter((name) => !takenName(name));
    for (const name of refused) delete headers[name];
    const names = refused.map((name) => `'${name}'`).join(', ');
    return new ConnectorError(
      source,
      `${what} has a header the bus refuses (${names}): a header name is printable ASCII without white space or colon`,
    );
  }
}

function takenName(name: string): boolean {
  try {
    checkHeaders({ [name]: '' }, 'header');
    return true;
  } catch {
    return false;
  }
}

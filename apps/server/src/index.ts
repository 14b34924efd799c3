export type { ServerOptions } from './server.ts';
export { createServer, POLICY_HEADER } from './server.ts';

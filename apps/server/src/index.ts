export type { ServerOptions } from './server.ts';
export { createServer } from './server.ts';

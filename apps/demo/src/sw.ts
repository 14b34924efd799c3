// The demo's service worker (a classic script; vite-plugin.ts compiles it to sw.js and puts
// SHELL, the build's files, and VERSION, their hash, in front). The app shell is precached
// at install, so the page opens offline once it has been loaded. Model files are not this
// worker's business: the page keeps them in Cache Storage itself (src/model-files.ts).
declare const SHELL: readonly string[];
declare const VERSION: string;

const worker = self as unknown as ServiceWorkerGlobalScope;
const SHELL_CACHE = `kvc-demo-shell-${VERSION}`;

worker.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(SHELL_CACHE);
      await cache.addAll(SHELL.map((f) => new Request(f, { cache: 'reload' })));
      await worker.skipWaiting();
    })(),
  );
});

worker.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith('kvc-demo-shell-') && name !== SHELL_CACHE) await caches.delete(name);
      }
      await worker.clients.claim();
    })(),
  );
});

/** Absolute URLs of the shell files. */
const SHELL_URLS = new Set(SHELL.map((f) => new URL(f, worker.location.href).href));

worker.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  // Only pages and the shell: model downloads and everything else go to the network untouched.
  if (request.mode !== 'navigate' && !SHELL_URLS.has(request.url)) return;
  event.respondWith(respond(request));
});

/** Pages: the network first (a new build shows at once), the cached shell offline. Shell files: the cache first. */
async function respond(request: Request): Promise<Response> {
  const shell = await caches.open(SHELL_CACHE);
  if (request.mode === 'navigate') {
    try {
      return await fetch(request);
    } catch {
      return (await shell.match('./')) ?? (await shell.match(request)) ?? offline();
    }
  }
  const hit = await shell.match(request);
  if (hit !== undefined) return hit;
  try {
    return await fetch(request);
  } catch {
    return offline();
  }
}

function offline(): Response {
  return new Response('Offline, and this file was not cached.', { status: 503, headers: { 'content-type': 'text/plain' } });
}

// The default model's manifest, shared by the app (src/model-files.ts) and the build
// (vite-plugin.ts, which runs before workspace packages resolve: keep this file import-free).

/** What the build (or the dev server) publishes next to the default model's files. */
export interface ModelManifest {
  readonly name: string;
  readonly files: readonly { readonly name: string; readonly size: number; readonly sha256: string }[];
}

/** Files the Hugging Face loader reads, of everything in a model folder. */
export function isHfLoaderFile(name: string): boolean {
  return (
    name === 'config.json' ||
    name === 'generation_config.json' ||
    name === 'tokenizer.json' ||
    name === 'tokenizer_config.json' ||
    name === 'chat_template.jinja' ||
    name.endsWith('.safetensors') ||
    name.endsWith('.safetensors.index.json')
  );
}

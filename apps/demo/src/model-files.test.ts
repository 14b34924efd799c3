import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { ModelFormatError } from '@kvcompress/core';
import { hasShared, sharedPath } from '@kvcompress/test-support';
import { describe, expect, it } from 'vitest';
import { defaultModelDir } from '../test/default-model.ts';
import { loadModelFromFiles, type PickedFile, stripCommonFolder } from './model-files.ts';

function picked(file: string, name = path.basename(file)): PickedFile {
  return { name, size: statSync(file).size, bytes: async () => new Uint8Array(readFileSync(file)) };
}

describe('models picked from disk', () => {
  it('strips the folder a picked directory shares', () => {
    expect(stripCommonFolder(['m/config.json', 'm/a.safetensors'])).toEqual({ folder: 'm', names: ['config.json', 'a.safetensors'] });
    expect(stripCommonFolder(['config.json', 'm/a.safetensors'])).toEqual({ folder: '', names: ['config.json', 'm/a.safetensors'] });
  });

  it('loads the default model as a picked Hugging Face folder, with progress', async () => {
    const dir = defaultModelDir();
    const files = readdirSync(dir).map((n) => picked(path.join(dir, n), `kvc-20m-4k/${n}`));
    let last = 0;
    const { model, label } = await loadModelFromFiles(files, (loaded) => {
      last = loaded;
    });
    expect(label).toBe('kvc-20m-4k');
    expect(model.format).toBe('safetensors');
    expect(model.config.numLayers).toBe(6);
    expect(model.config.numKvHeads).toBe(4);
    expect(model.tokenizer?.decode(model.tokenizer.encode('The pass key is 40721.', { addBos: false }))).toBe('The pass key is 40721.');
    expect(last).toBeGreaterThan(39_000_000);
  });

  it('tells what to pick when files are missing or not a model', async () => {
    const dir = defaultModelDir();
    const shard = picked(path.join(dir, 'model-00001-of-00003.safetensors'));
    await expect(loadModelFromFiles([shard])).rejects.toThrow(/needs its config.json/);
    await expect(loadModelFromFiles([picked(path.join(dir, 'config.json'))])).rejects.toBeInstanceOf(ModelFormatError);
    await expect(loadModelFromFiles([picked(path.join(dir, 'tokenizer.json'))])).rejects.toThrow(/Pick a .gguf file/);
    await expect(loadModelFromFiles([])).rejects.toThrow(/No files were picked/);
  });

  it.skipIf(!hasShared('models/stories260K/stories260K.gguf', 'models/stories260K/stories260K.bin'))(
    'loads a GGUF file, and a llama2.c checkpoint with its tokenizer',
    async () => {
      const gguf = await loadModelFromFiles([picked(sharedPath('models/stories260K/stories260K.gguf'))]);
      expect(gguf.model.format).toBe('gguf');
      expect(gguf.label).toBe('stories260K.gguf');
      const bin = picked(sharedPath('models/stories260K/stories260K.bin'));
      await expect(loadModelFromFiles([bin])).rejects.toThrow(/pick tokenizer.bin/);
      const llama2c = await loadModelFromFiles([bin, picked(sharedPath('models/stories260K/tok512.bin'))]);
      expect(llama2c.model.format).toBe('llama2c');
      expect(llama2c.model.tokenizer?.vocabSize).toBe(512);
    },
  );
});

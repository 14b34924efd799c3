// Stands in for onnxruntime-web in the browser build. @kvcompress/models imports it for
// OnnxDenseRunner (the dense-cache peer baseline), which the demo never uses; without this
// stand-in the build would carry onnxruntime's 28 MB WebAssembly file.
const unavailable = (): never => {
  throw new Error('onnxruntime-web is not part of the demo build');
};
export const InferenceSession = { create: unavailable };
export class Tensor {
  constructor() {
    unavailable();
  }
}
export const env = { wasm: {} };

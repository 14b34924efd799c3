// Stands in for the `webgpu` npm package (Dawn for Node.js) in the browser build:
// @kvcompress/webgpu imports it only where navigator.gpu is missing, and then this error
// becomes its WebGpuUnavailableError.
throw new Error('this browser build has no Node.js WebGPU (Dawn)');

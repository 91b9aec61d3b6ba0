// The CUDA layer of megamoe: the only code that talks to libcuda. Import from here ('../cuda/index.js').
//
//   const st = cudaStatus();                        // never throws; { available: false, reason } without a GPU
//   const kernel = await loadKernel({ source: 'staging.cu', defines: { HIDDEN: 4096 }, entry: 'stage_tokens' });
//   using stream = Stream.create();
//   using x = DeviceTensor.fromHost(hostX, stream);
//   kernel.launch({ grid: [T], block: [128], stream }, [x, out, arg.u32(T), arg.f32(scale), tensorMap]);
//   const y = out.toHost(stream);
export { CudaError, CudaUnavailableError, cuResultName, CU_RESULT_NAMES } from './errors.js';
export { cudaStatus, gpuSkipReason, REQUIRED_COMPUTE_CAPABILITY, type CudaStatus } from './status.js';
export {
  CudaContext, useDevice, ensureContext, currentCudaContext, deviceCount, deviceProperties, driverVersion,
  formatCudaVersion, type DeviceProperties,
} from './device.js';
export {
  DeviceBuffer, PinnedBuffer, copyDeviceToHostRaw, copyHostToDeviceRaw, copyDeviceToDeviceRaw, type HostMemory, type CopyOptions,
} from './memory.js';
export { Stream, CudaEvent, elapsedMs, streamHandle, type StreamLike } from './stream.js';
export { arg, layoutKernelArgs, ArgPacker, type KernelArg, type KernelArgLike, type ToKernelArg, type ArgLayout } from './args.js';
export {
  CudaModule, Kernel, FUNC_ATTRIBUTE, type Dim3, type LaunchConfig, type KernelAttributes,
} from './module.js';
export {
  compileKernel, compileKernelSync, cacheKey, collectSources, compileFlags, defineFlags, findNvcc, nvccVersion,
  nvccRelease, kernelCacheDir, kernelsDir, packageRoot, KernelCompileError, BASE_NVCC_FLAGS,
  type CompileOptions, type CompiledKernel, type Defines, type DefineValue,
} from './compile.js';
export { loadKernel, loadKernelSync, unloadAllKernels, type LoadKernelOptions } from './kernel-loader.js';
export {
  TensorMap, encodeTensorMapTiled, tensorMap2D, tensorMap3D, validateTensorMapOptions, TENSOR_MAP_BYTES,
  type TensorMapDataType, type TensorMapSwizzle, type TensorMapL2Promotion, type TensorMapTiledOptions,
  type TensorMap2DOptions, type TensorMap3DOptions,
} from './tensor-map.js';
export { CudaGraph, type CaptureMode } from './graph.js';
export { canAccessPeer, enablePeerAccess } from './peer.js';
export { DeviceTensor } from './device-tensor.js';
export {
  registerKernel, registeredKernels, normalizeVariant, clearKernelRegistry, type KernelRegistration, type KernelVariant,
} from './kernel-registry.js';
export { measureLaunchOverhead, type LaunchOverheadOptions, type LaunchOverheadResult } from './launch-overhead.js';
export {
  NcclCommunicator, NcclError, NcclUnavailableError, NCCL_RESULT_NAMES, NCCL_DATA_TYPES, NCCL_RED_OPS, NCCL_UNIQUE_ID_BYTES,
  NCCL_LIBRARY_ENV, ncclResultName, ncclLibraryCandidates, tryLoadNccl, getNccl, checkNccl, ncclVersion, decodeNcclVersion,
  ncclGetUniqueId, ncclGroup, ncclDataType, checkCommInitArgs,
  type Nccl, type NcclFunctions, type NcclLoadOptions, type NcclDataType, type NcclRedOp,
} from './nccl.js';
export {
  exportIpcMemory, openIpcMemory, IpcMapping, bindIpc, allocationRange, serializeIpcExport, parseIpcExport, encodeIpcHandle,
  decodeIpcHandle, CU_IPC_HANDLE_BYTES, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, IPC_EXPORT_BYTES,
  type IpcExport, type IpcFunctions,
} from './ipc.js';

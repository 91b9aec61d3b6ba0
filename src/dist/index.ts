// The distributed layer of megamoe: one OS process per rank (GPU), supervised by the megamoe process. Import from
// here ('../dist/index.js').
//
//   const { results } = await runRanks({ worldSize: 4, program: new URL('./my-rank.js', import.meta.url), devices: [0] });
//   // my-rank.js:  export default async (ctx: RankContext) => { ...load...; await ctx.ready(); ...run...; return summary; }
//   //              const transport = await NcclTransport.create(ctx);  transport.allToAllV({...}, stream);
export { RANK_ENV, MAX_WORLD_SIZE, rankFromEnv, rankEnv, validateRankIdentity, assignDevices, type RankIdentity } from './rank.js';
export { runRanks, RankFailureError, type SupervisorOptions, type RunResult, type RankFailureKind } from './supervisor.js';
export { RankChannel, ABORTED_EXIT_CODE, ORPHANED_EXIT_CODE, type RankContext } from './rank-channel.js';
export type { RankProgram } from './rank-entry.js';
export { MAX_BLOB_BYTES } from './protocol.js';
export {
  checkAllToAllV, elementBytes, packedOffsets, type AllToAllV, type Transport, type TransportDType, type TransportName,
} from './transport.js';
export { NcclTransport, NCCL_UNIQUE_ID_KEY, type NcclCommLike, type NcclTransportDeps, type UniqueIdExchange } from './nccl-transport.js';
export { type DeviceRegion } from './transport.js';
export {
  SymmetricMemory, CUDA_SYMMETRIC_DEPS, type SymmetricDeps, type SymmetricExchange, type SymmetricOptions,
} from './symmetric-memory.js';
export { IpcTransport, RECEIVE_ALIGN, type IpcTransportDeps, type IpcTransportOptions, type SymmetricHeap } from './ipc-transport.js';
export { createTransport, parseTransportName, transportRefusal, TRANSPORT_NAMES, type CreateTransportOptions } from './transports.js';

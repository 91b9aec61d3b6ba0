// Peer access between GPUs of one host (NVLink / PCIe), needed before one device's kernels touch another's memory.
import { currentCudaContext, deviceHandle, useDevice } from './device.js';
import { getDriver, throwCuda } from './driver.js';

const CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704;

/** Whether `device` can map `peerDevice`'s memory. */
export function canAccessPeer(device: number, peerDevice: number): boolean {
  const d = getDriver();
  const dev = deviceHandle(device);
  const peer = deviceHandle(peerDevice);
  const rc = d.fn.cuDeviceCanAccessPeer(d.scratch.address, dev, peer);
  if (rc !== 0) throwCuda('cuDeviceCanAccessPeer', rc, `devices ${device} -> ${peerDevice}`);
  return d.scratch.view.getInt32(0, true) !== 0;
}

/**
 * Lets kernels on `device` access memory of `peerDevice` (idempotent). The previously current context is restored.
 * Throws a clear error when the hardware cannot do it.
 */
export function enablePeerAccess(device: number, peerDevice: number): void {
  if (device === peerDevice) return;
  if (!canAccessPeer(device, peerDevice)) {
    throw new Error(`device ${device} cannot access device ${peerDevice}'s memory (no P2P path between them)`);
  }
  const previous = currentCudaContext();
  const peerCtx = useDevice(peerDevice);
  useDevice(device);
  try {
    const rc = getDriver().fn.cuCtxEnablePeerAccess(peerCtx.handle, 0);
    if (rc !== 0 && rc !== CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) throwCuda('cuCtxEnablePeerAccess', rc, `devices ${device} -> ${peerDevice}`);
  } finally {
    previous?.makeCurrent();
  }
}

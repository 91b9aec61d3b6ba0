// Runs a test body with environment variables set (undefined = unset) and restores them after, also when the body
// throws or its promise rejects: for the kernels' tuning knobs, which are read when a kernel or layer is built.
export function withEnv<T>(vars: Record<string, string | undefined>, fn: () => T): T {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (v: Record<string, string | undefined>): void => {
    for (const [k, x] of Object.entries(v)) if (x === undefined) delete process.env[k]; else process.env[k] = x;
  };
  set(vars);
  let result: T;
  try {
    result = fn();
  } catch (err) {
    set(saved);
    throw err;
  }
  if (result instanceof Promise) return result.finally(() => set(saved)) as T;
  set(saved);
  return result;
}

// `megamoe serve --device gpu`: the whole step on the GPU (src/gpu-model/model.ts) behind the OpenAI API, as a
// process, driven by the official openai client on loopback. A tiny whole DeepSeek-V4 checkpoint with the real
// tokenizer, at hidden size 256 so the fused kernel can run it. One server per MoE backend:
//   - unfused (the default): chat and completions, streamed and not, usage;
//   - deep_gemm_mega_moe with --enable-expert-parallel (one GPU: EP size 1).
// The fused kernel is bit-identical to the unfused pipeline inside the GPU step (test/gpu-model-mega.test.ts), so
// the two servers' greedy answers to the same requests, one at a time, must match word for word. Three requests at
// once are served in shared steps (prefill chunks and decodes mixed); their answers are not compared across servers,
// since how the requests share steps follows their arrival. Skipped without a Hopper GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import OpenAI from 'openai';
import { gpuSkipReason } from '../src/cuda/index.js';
import { makeModelCheckpointSync } from '../src/model/checkpoint-writer.js';
import { encodeChat, loadTokenizer } from '../src/tokenizer/index.js';
import { startServeProcess } from './serve-process.js';

const skip = gpuSkipReason();

async function withServer<T>(args: string[], env: NodeJS.ProcessEnv, body: (client: OpenAI, model: string) => Promise<T>): Promise<{ result: T; log: string }> {
  const server = await startServeProcess(['--port', '0', '--device', 'gpu', ...args], env, 240_000);
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const model = (await client.models.list()).data[0].id;
    return { result: await body(client, model), log: server.log() };
  } finally {
    await server.stop();
  }
}

test('megamoe serve --device gpu answers the OpenAI API; unfused and deep_gemm_mega_moe give the same greedy text', { skip, timeout: 900_000 }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-gpu-serve-'));
  const dir = path.join(tmp, 'tiny-256');
  const env = { ...process.env, MEGAMOE_CACHE_DIR: process.env.MEGAMOE_CACHE_DIR ?? path.join(tmp, 'cache') };
  try {
    makeModelCheckpointSync({ preset: 'tiny', layers: 3, expertDtype: 'fp8', seed: 21, out: dir, overrides: { hidden_size: 256 } });
    const tok = await loadTokenizer(dir);
    const messages = [{ role: 'user' as const, content: 'Write one sentence about the sea.' }];
    const prompts = ['The harbour at night', 'Three things about rivers:', 'Once upon a time'];
    const greedy = async (client: OpenAI, model: string) => {
      const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
      assert.equal(chat.usage?.prompt_tokens, encodeChat(messages, tok).length, 'prompt usage = the V4 chat encoding of the real tokenizer');
      assert.equal(chat.usage?.completion_tokens, 12);
      const stream = await client.completions.create({ model, prompt: prompts[0], max_tokens: 10, temperature: 0, stream: true });
      let streamed = '';
      for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? '';
      const plain = await client.completions.create({ model, prompt: prompts[0], max_tokens: 10, temperature: 0 });
      assert.equal(plain.choices[0].text, streamed, 'streamed and non-streamed completions agree');
      // Three at once: their prompts are prefilled and decoded in shared steps.
      const together = await Promise.all(prompts.map((prompt) => client.completions.create({ model, prompt, max_tokens: 10, temperature: 0 })));
      for (const c of together) assert.equal(c.usage?.completion_tokens, 10);
      return { chat: chat.choices[0].message.content, plain: plain.choices[0].text };
    };
    const unfused = await withServer(['--model', dir, '--max-num-seqs', '4'], env, greedy);
    assert.match(unfused.log, /the whole step on the GPU, moe_backend (auto|unfused)/);
    const mega = await withServer(['--model', dir, '--max-num-seqs', '4', '--enable-expert-parallel', '--kernel-config', '{"moe_backend":"deep_gemm_mega_moe"}'], env, greedy);
    assert.match(mega.log, /the whole step on the GPU, moe_backend mega_moe, expert parallel/);
    t.diagnostic(`greedy chat answer (both backends): ${JSON.stringify(unfused.result.chat)}`);
    assert.deepEqual(mega.result, unfused.result, 'the fused MoE kernel in the GPU step gives the unfused pipeline\'s greedy answers');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

// The HTTP server on loopback, driven by the official `openai` client (and plain fetch where the client would not
// send the malformed thing): chat and completions streamed and not, usage, stop strings, seeds, every refusal,
// metrics, 32 concurrent clients, a client that disconnects. Parts: server-fixture.ts (test doubles until the
// model lands; the assertions use the parts' own tokenizer, so they hold on the real model too, except the
// ones marked toy).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { MODEL, startTestServer, toyGreedy, waitFor, type TestServer } from './server-fixture.js';

const client = (s: TestServer, apiKey = 'none') => new OpenAI({ baseURL: `${s.url}/v1`, apiKey, maxRetries: 0, timeout: 20_000 });

async function getJson(url: string, init?: RequestInit) {
  const r = await fetch(url, init);
  const text = await r.text();
  return { status: r.status, headers: r.headers, body: text ? JSON.parse(text) as Record<string, any> : undefined, text };
}

describe('server: endpoints on loopback', () => {
  let s: TestServer;
  let ai: OpenAI;
  before(async () => { s = await startTestServer({ maxNumSeqs: 4, maxQueue: 16 }, {}, { maxContext: 256 }); ai = client(s); });
  after(async () => { await s.close(); });

  test('/v1/models, /health, /version, /', async () => {
    const models = await ai.models.list();
    assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
    assert.equal((models.data[0] as unknown as { max_model_len: number }).max_model_len, 256);
    const h = await fetch(`${s.url}/health`);
    assert.equal(h.status, 200);
    assert.deepEqual((await getJson(`${s.url}/version`)).body, { version: '0.1.0-test' });
    const page = await fetch(`${s.url}/`);
    assert.match(page.headers.get('content-type')!, /text\/html/);
    assert.match(await page.text(), /<title>megamoe chat<\/title>/);
  });

  test('chat completion, not streamed: text, finish_reason, usage equal to the tokenizer\'s counts', async () => {
    const messages = [{ role: 'system' as const, content: 'be brief' }, { role: 'user' as const, content: 'hello there' }];
    const r = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 20, temperature: 0 });
    assert.equal(r.object, 'chat.completion');
    assert.match(r.id, /^chatcmpl-/);
    const promptIds = s.parts.encodeChat(messages);
    const content = r.choices[0].message.content!;
    assert.equal(r.choices[0].message.role, 'assistant');
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.usage!.prompt_tokens, promptIds.length);
    assert.equal(r.usage!.completion_tokens, 20);
    assert.equal(r.usage!.total_tokens, promptIds.length + 20);
    assert.equal(s.parts.tokenizer.encode(content).length, 20);
    if (s.toy) assert.equal(content, toyGreedy(promptIds.length, 20)); // toy
  });

  test('chat completion, streamed: role first, deltas add up to the unstreamed text, usage chunk last', async () => {
    const messages = [{ role: 'user' as const, content: 'stream please' }];
    const plain = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 24, temperature: 0 });
    const stream = await ai.chat.completions.create({
      model: MODEL, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    assert.equal(text, plain.choices[0].message.content);
    const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
    assert.equal(finish.length, 1);
    assert.equal(finish[0].choices[0].finish_reason, 'length');
    const last = chunks[chunks.length - 1];
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, plain.usage);
    assert.ok(chunks.slice(0, -1).every((c) => c.usage === null), 'usage is null on every chunk but the last');
  });

  test('completions, streamed and not; default max_tokens 16; token-id prompts', async () => {
    const prompt = 'Once upon a time';
    const r = await ai.completions.create({ model: MODEL, prompt, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.usage!.prompt_tokens, 1 + s.parts.tokenizer.encode(prompt).length); // BOS + text
    assert.equal(r.usage!.completion_tokens, 16);
    assert.equal(r.choices[0].finish_reason, 'length');
    const stream = await ai.completions.create({ model: MODEL, prompt, temperature: 0, stream: true, max_tokens: 16 });
    let text = '';
    let finish: string | null = null;
    for await (const c of stream) { text += c.choices[0]?.text ?? ''; finish = c.choices[0]?.finish_reason ?? finish; }
    assert.equal(text, r.choices[0].text);
    assert.equal(finish, 'length');
    const ids = [s.parts.tokenizer.bosId, ...s.parts.tokenizer.encode(prompt)];
    const byIds = await ai.completions.create({ model: MODEL, prompt: ids, temperature: 0, max_tokens: 16 });
    assert.equal(byIds.choices[0].text, r.choices[0].text);
  });

  test('stop strings end the text before the match, streamed or not', async () => {
    const messages = [{ role: 'user' as const, content: 'go' }];
    const free = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 60, temperature: 0 });
    const full = free.choices[0].message.content!;
    const stop = full.slice(10, 13); // three characters from inside the greedy answer
    const cut = full.indexOf(stop);
    const r = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 60, temperature: 0, stop: [stop, '@@@'] });
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.equal(r.choices[0].message.content, full.slice(0, cut));
    const stream = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 60, temperature: 0, stop, stream: true });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
    assert.equal(text, full.slice(0, cut));
    const c = await ai.completions.create({ model: MODEL, prompt: 'x', max_tokens: 60, temperature: 0, stop: '.' });
    assert.ok(!c.choices[0].text.includes('.'));
  });

  test('seeded sampling is reproducible (streamed or not); another seed differs', async () => {
    const req = { model: MODEL, messages: [{ role: 'user' as const, content: 'random' }], max_tokens: 40, temperature: 1, top_p: 0.95 };
    const a = await ai.chat.completions.create({ ...req, seed: 7 });
    const b = await ai.chat.completions.create({ ...req, seed: 7 });
    const c = await ai.chat.completions.create({ ...req, seed: 8 });
    assert.equal(a.choices[0].message.content, b.choices[0].message.content);
    assert.notEqual(a.choices[0].message.content, c.choices[0].message.content);
    const stream = await ai.chat.completions.create({ ...req, seed: 7, stream: true });
    let text = '';
    for await (const ch of stream) text += ch.choices[0]?.delta.content ?? '';
    assert.equal(text, a.choices[0].message.content);
  });

  test('refusals in OpenAI\'s error shape: bad JSON, wrong types, missing fields, unknown model, too long, n > 1', async () => {
    const post = (path: string, body: string) => getJson(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const shape = (b: any) => {
      assert.equal(typeof b.error.message, 'string');
      assert.equal(typeof b.error.type, 'string');
      assert.ok('param' in b.error && 'code' in b.error);
    };
    const bad = await post('/v1/chat/completions', '{"model": "toy", "messages": [');
    assert.equal(bad.status, 400);
    shape(bad.body);
    assert.equal(bad.body!.error.code, 'invalid_json');

    const wrongType = await post('/v1/chat/completions', JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], temperature: 'hot' }));
    assert.equal(wrongType.status, 400);
    shape(wrongType.body);
    assert.equal(wrongType.body!.error.param, 'temperature');
    const badRole = await post('/v1/chat/completions', JSON.stringify({ model: MODEL, messages: [{ role: 'wizard', content: 'x' }] }));
    assert.equal(badRole.status, 400);
    assert.equal(badRole.body!.error.param, 'messages.0.role');
    const missing = await post('/v1/completions', JSON.stringify({ model: MODEL }));
    assert.equal(missing.status, 400);
    assert.equal(missing.body!.error.param, 'prompt');
    const outOfRange = await post('/v1/completions', JSON.stringify({ model: MODEL, prompt: 'x', top_p: 0 }));
    assert.equal(outOfRange.status, 400);

    // The same refusals as the client library sees them: its error classes from the status, the body intact.
    await assert.rejects(ai.chat.completions.create({ model: 'gpt-9', messages: [{ role: 'user', content: 'x' }] }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.NotFoundError);
      assert.equal(e.status, 404);
      assert.equal(e.code, 'model_not_found');
      assert.equal(e.param, 'model');
      return true;
    });
    await assert.rejects(ai.completions.create({ model: MODEL, prompt: 'y'.repeat(300) }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.code, 'context_length_exceeded');
      assert.equal(e.param, 'prompt');
      assert.match(e.message, /maximum context length is 256 tokens/);
      return true;
    });
    await assert.rejects(ai.completions.create({ model: MODEL, prompt: 'y'.repeat(200), max_tokens: 100 }), OpenAI.BadRequestError);
    await assert.rejects(ai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], n: 2 }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.param, 'n');
      return true;
    });
    await assert.rejects(ai.completions.create({ model: MODEL, prompt: ['a', 'b'] }), OpenAI.BadRequestError);
    await assert.rejects(ai.completions.create({ model: MODEL, prompt: 'a', stream_options: { include_usage: true } }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'stream_options');
    const notFound = await getJson(`${s.url}/v1/nothing`);
    assert.equal(notFound.status, 404);
    shape(notFound.body);
  });

  test('/metrics: vLLM\'s names with model_name, counting what was served', async () => {
    await ai.completions.create({ model: MODEL, prompt: 'count me', max_tokens: 5, temperature: 0 });
    const text = await (await fetch(`${s.url}/metrics`)).text();
    for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc']) {
      assert.match(text, new RegExp(`^${name}\\{model_name="${MODEL}"\\} \\d`, 'm'), name);
    }
    for (const name of ['vllm:time_to_first_token_seconds', 'vllm:inter_token_latency_seconds', 'vllm:time_per_output_token_seconds', 'vllm:e2e_request_latency_seconds']) {
      assert.match(text, new RegExp(`^${name}_count\\{model_name="${MODEL}"\\} [1-9]`, 'm'), name);
    }
    const counter = (name: string) => Number(new RegExp(`^${name}\\{model_name="${MODEL}"\\} (\\d+)`, 'm').exec(text)?.[1]);
    assert.ok(counter('vllm:prompt_tokens_total') > 0);
    assert.ok(counter('vllm:generation_tokens_total') >= 5);
    assert.match(text, /^vllm:request_success_total\{model_name="toy",finished_reason="length"\} [1-9]/m);
  });
});

describe('server: --api-key', () => {
  let s: TestServer;
  before(async () => { s = await startTestServer({}, { apiKey: 'sekret' }); });
  after(async () => { await s.close(); });

  test('missing or wrong key -> 401 on /v1; the right key works; /health and /metrics stay open', async () => {
    const noKey = await getJson(`${s.url}/v1/models`);
    assert.equal(noKey.status, 401);
    assert.equal(noKey.body!.error.type, 'authentication_error');
    assert.equal(noKey.body!.error.code, 'missing_api_key');
    await assert.rejects(client(s, 'wrong').models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError && e.code === 'invalid_api_key');
    await assert.rejects(client(s, 'wrong').chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }), OpenAI.AuthenticationError);
    const ok = await client(s, 'sekret').chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 3 });
    assert.equal(ok.usage!.completion_tokens, 3);
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
    assert.equal((await fetch(`${s.url}/metrics`)).status, 200);
  });
});

describe('server: load and disconnects', () => {
  test('32 concurrent streaming clients against 4 slots and a queue of 8: every one answered in full or 429', async () => {
    const s = await startTestServer({ maxNumSeqs: 4, maxQueue: 8 }, {}, { stepDelayMs: 2 });
    try {
      const ai = client(s);
      // Scrape /metrics while the load runs: the gauges never exceed the slots and the queue, and show the load.
      let scraping = true;
      let maxRunning = 0;
      let maxWaiting = 0;
      const scraper = (async () => {
        while (scraping) {
          const text = await (await fetch(`${s.url}/metrics`)).text();
          maxRunning = Math.max(maxRunning, Number(/^vllm:num_requests_running\{[^}]*\} (\d+)/m.exec(text)![1]));
          maxWaiting = Math.max(maxWaiting, Number(/^vllm:num_requests_waiting\{[^}]*\} (\d+)/m.exec(text)![1]));
          const kv = Number(/^vllm:kv_cache_usage_perc\{[^}]*\} ([\d.e-]+)/m.exec(text)![1]);
          assert.ok(kv >= 0 && kv <= 1, `kv_cache_usage_perc ${kv}`);
          await new Promise((r) => setTimeout(r, 5));
        }
      })();
      const outcomes = await Promise.all(Array.from({ length: 32 }, async (_, i) => {
        try {
          const stream = await ai.chat.completions.create({
            model: MODEL, messages: [{ role: 'user', content: `client ${i}` }], max_tokens: 12, temperature: 0, stream: true,
          });
          let text = '';
          let finish: string | null = null;
          for await (const c of stream) { text += c.choices[0]?.delta.content ?? ''; finish = c.choices[0]?.finish_reason ?? finish; }
          assert.equal(finish, 'length');
          assert.equal(s.parts.tokenizer.encode(text).length, 12);
          return 'ok';
        } catch (e) {
          if (e instanceof OpenAI.RateLimitError) {
            assert.equal(e.headers?.get('retry-after'), '1');
            assert.equal(e.code, 'queue_full');
            return '429';
          }
          throw e;
        }
      }));
      scraping = false;
      await scraper;
      assert.ok(maxRunning >= 1 && maxRunning <= 4, `running peaked at ${maxRunning}`);
      assert.ok(maxWaiting <= 8, `waiting peaked at ${maxWaiting}`);
      const ok = outcomes.filter((o) => o === 'ok').length;
      assert.equal(ok + outcomes.filter((o) => o === '429').length, 32);
      console.log(`32 clients: ${ok} answered, ${32 - ok} refused with 429`);
      assert.ok(ok >= 12, `only ${ok} answered: 4 running + 8 queued must be`);
      await waitFor(() => s.engine.numRunning === 0 && s.engine.numWaiting === 0);
      if (s.toy) assert.equal(s.toy.live.size, 0);
      if (s.toy) assert.ok(Math.max(...s.toy.steps.map((st) => st.length)) > 1, 'requests were batched');
    } finally {
      await s.close();
    }
  });

  test('a client that disconnects mid-stream (or mid-request) frees its slot at once', async () => {
    const s = await startTestServer({ maxNumSeqs: 1, maxQueue: 0 }, {}, { stepDelayMs: 2 });
    try {
      const ai = client(s);
      const ac = new AbortController();
      const stream = await ai.chat.completions.create(
        { model: MODEL, messages: [{ role: 'user', content: 'long' }], max_tokens: 200, temperature: 0, stream: true },
        { signal: ac.signal },
      );
      let pieces = 0;
      // The SDK ends the iteration quietly on abort (no error), as a user's "stop" button would.
      for await (const c of stream) {
        if (c.choices[0]?.delta.content && ++pieces === 3) ac.abort();
      }
      assert.equal(pieces, 3);
      await waitFor(() => s.engine.numRunning === 0, 2000, 'the slot to free');
      if (s.toy) assert.equal(s.toy.live.size, 0);
      // The one slot is free: the next request is served, not refused.
      const r = await ai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'next' }], max_tokens: 4 });
      assert.equal(r.usage!.completion_tokens, 4);

      const ac2 = new AbortController();
      const pending = fetch(`${s.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac2.signal,
        body: JSON.stringify({ model: MODEL, prompt: 'long', max_tokens: 200 }),
      });
      await waitFor(() => s.engine.numRunning === 1, 2000, 'the request to start');
      ac2.abort();
      await assert.rejects(pending);
      await waitFor(() => s.engine.numRunning === 0, 2000, 'the slot to free');
      const steps = s.engine.steps;
      await new Promise((r2) => setTimeout(r2, 30));
      assert.equal(s.engine.steps, steps, 'no step ran after the cancel');
    } finally {
      await s.close();
    }
  });

  test('a model step that fails mid-stream: an error event the client raises, then the server serves on', async () => {
    const s = await startTestServer({ maxNumSeqs: 2, maxQueue: 2 });
    try {
      if (!s.toy) return; // the failure is injected into the toy model
      const real = s.toy.step.bind(s.toy);
      let calls = 0;
      s.toy.step = async (items) => { if (++calls === 4) throw new Error('injected device fault'); return real(items); };
      const stream = await client(s).chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 50, stream: true });
      await assert.rejects((async () => { for await (const _ of stream) { /* drain */ } })(), (e: unknown) => {
        assert.ok(e instanceof OpenAI.APIError);
        assert.match(e.message, /injected device fault/);
        return true;
      });
      await assert.rejects(client(s).completions.create({ model: MODEL, prompt: 'y', max_tokens: 3 }).then(() => {
        s.toy!.step = async () => { throw new Error('again'); };
        return client(s).completions.create({ model: MODEL, prompt: 'y', max_tokens: 3 });
      }), (e: unknown) => e instanceof OpenAI.InternalServerError && e.code === 'engine_error');
      s.toy.step = real;
      const ok = await client(s).completions.create({ model: MODEL, prompt: 'y', max_tokens: 3 });
      assert.equal(ok.usage!.completion_tokens, 3);
      assert.equal(s.toy.live.size, 0);
    } finally {
      await s.close();
    }
  });

  test('per-request deadline: generation ends with finish_reason "length"', async () => {
    const s = await startTestServer({ maxNumSeqs: 2, maxQueue: 2 }, { requestTimeoutMs: 60 }, { stepDelayMs: 5 });
    try {
      const r = await client(s).completions.create({ model: MODEL, prompt: 'slow', max_tokens: 400 });
      assert.equal(r.choices[0].finish_reason, 'length');
      assert.ok(r.usage!.completion_tokens < 400);
    } finally {
      await s.close();
    }
  });
});

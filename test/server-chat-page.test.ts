// The chat page at / in a real headless Chromium (Debian's `chromium` package, driven by playwright-core): type a
// message, send it, see the streamed answer appear and the usage line. Skips, saying why, where /usr/bin/chromium
// is absent (CI must `apt-get install -y chromium` for it to run; see docs/SERVER.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { chromium } from 'playwright-core';
import { startTestServer } from './server-fixture.js';

const CHROMIUM = process.env.MEGAMOE_CHROMIUM ?? '/usr/bin/chromium';
const skip = fs.existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set MEGAMOE_CHROMIUM)`;

test('chat page: a message sent in headless Chromium streams its answer back', { skip, timeout: 60_000 }, async () => {
  const s = await startTestServer({ maxNumSeqs: 2, maxQueue: 2 }, { apiKey: 'page-key' }, { stepDelayMs: 3 });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
      '--disable-extensions', '--disable-sync', '--no-first-run', '--mute-audio'],
  });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${s.url}/`);
    // The server has a key: without it the page says so, with it the model name appears.
    await page.fill('#apikey', 'page-key');
    await page.dispatchEvent('#apikey', 'change');
    await page.waitForFunction("document.getElementById('model').textContent === 'toy'");
    await page.fill('#maxtokens', '40');
    await page.fill('#input', 'hello from the browser');
    await page.press('#input', 'Enter');
    await page.waitForSelector('.msg.assistant[data-state="done"]', { timeout: 30_000 });
    const answer = await page.textContent('.msg.assistant');
    const user = await page.textContent('.msg.user');
    assert.equal(user, 'hello from the browser');
    assert.ok(answer && answer.length > 0, 'an answer was shown');
    // The page samples at the default temperature 1: the text is random, its length is the usage line's.
    const usage = /(\d+) tokens, first after \d+ ms/.exec((await page.textContent('#status')) ?? '');
    assert.ok(usage, 'the usage line is shown');
    assert.equal(Number(usage[1]), 40);
    if (s.toy) assert.equal(s.parts.tokenizer.encode(answer).length, 40);
    // Stop mid-answer: the page keeps the partial text, and the server frees the sequence at once.
    if (s.toy) s.toy.stepDelayMs = 10; // slow enough to click Stop halfway
    await page.fill('#maxtokens', '300');
    await page.fill('#input', 'and a long one');
    await page.click('#send');
    await page.waitForFunction("(document.querySelectorAll('.msg.assistant')[1] || { textContent: '' }).textContent.length >= 5");
    await page.click('#stop');
    await page.waitForSelector('.msg.assistant[data-state="stopped"]');
    const deadline = Date.now() + 3000;
    while (s.engine.numRunning > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.equal(s.engine.numRunning, 0, 'the stopped request released its slot');
    assert.equal(await page.isEnabled('#send'), true);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await s.close();
  }
});

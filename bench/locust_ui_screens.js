// Drive the Locust web UI like a person (docs/load.md "Locust web UI"): start from the form, screenshot the tabs,
// change rate and mix from the pdsuite bar. Needs playwright-core (npm) and /usr/bin/chromium.
//   UI=http://127.0.0.1:8089 OUT=/tmp/ui NODE_PATH=<dir>/node_modules node bench/locust_ui_screens.js
const { chromium } = require('playwright-core');
const OUT = process.env.OUT || '/tmp/ui';
(async () => {
  const b = await chromium.launch({ executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'] });
  const p = await b.newPage({ viewport: { width: 1500, height: 1000 } });
  const U = process.env.UI || 'http://127.0.0.1:8089';
  await p.goto(U + '/');
  await p.waitForTimeout(1500);
  await p.screenshot({ path: OUT + '/0-form.png' });
  const names = await p.$$eval('input', xs => xs.map(x => x.name + '=' + x.value));
  console.log('inputs', names.join(' '));
  await p.fill('input[name=userCount]', '2');
  await p.fill('input[name=spawnRate]', '2');
  const acc = p.getByText('Custom parameters');
  if (await acc.count()) { await acc.first().click(); await p.waitForTimeout(500); }
  const names2 = await p.$$eval('input', xs => xs.map(x => x.name));
  console.log('inputs after expand', names2.join(' '));
  await p.fill('input[name=pdRate]', '3');
  await p.fill('input[name=pdMix]', 'long_prefill=1,short_decode=3');
  await p.screenshot({ path: OUT + '/1-form-filled.png' });
  await p.getByRole('button', { name: /start/i }).first().click();
  await p.waitForTimeout(30000);
  await p.screenshot({ path: OUT + '/2-stats.png', fullPage: true });
  await p.goto(U + '/?tab=charts'); await p.waitForTimeout(3000);
  await p.screenshot({ path: OUT + '/3-charts.png', fullPage: true });
  await p.goto(U + '/?tab=pdsuite'); await p.waitForTimeout(3000);
  await p.screenshot({ path: OUT + '/4-pdsuite-tab.png', fullPage: true });
  // change rate and mix from the bar
  await p.fill('#pd-rate', '6');
  await p.fill('#pd-mix', 'long_prefill=1,short_decode=1');
  await p.click('#pd-apply'); await p.waitForTimeout(1500);
  console.log('after apply', await (await p.request.get(U + '/pdsuite')).text());
  await p.screenshot({ path: OUT + '/5-after-apply.png' });
  const c = await b.newPage({ viewport: { width: 1300, height: 1200 } });
  await c.goto(U + '/pdsuite/charts'); await p.waitForTimeout(12000);
  await c.screenshot({ path: OUT + '/6-class-charts.png', fullPage: true });
  await b.close();
})().catch(e => { console.error(e); process.exit(1); });

package broker

import (
	"hash/maphash"
	"runtime"
	"sync"

	"github.com/otad/otad/internal/ota"
)

// replyQueue is how many report_version_rsp replies may wait for a
// replier before a device's connection waits for room.
const replyQueue = 512

// reply is a report_version_rsp owed to a device.
type reply struct {
	productID, deviceName, version string
}

// repliers publish the broker's replies to devices' reports. They are not
// published from the device's own connection goroutine: mochi passes its
// 800-byte packets by value down every frame, and its publish path on top
// of its handling of the report and otad's hook takes that goroutine just
// past 32 KiB of stack, so it doubles to 64 KiB, kept until collections
// shrink it again (BenchmarkIdleConnectionMemory with GOGC=off: 74 KiB of
// stack a connection, 41 with the repliers; TestConnectionStacks). A few
// goroutines, their stacks grown once, publish them all; a device's
// replies always go through the same one, in order.
type repliers struct {
	queues []chan reply
	seed   maphash.Seed
	wg     sync.WaitGroup
}

// startRepliers starts one replier per CPU, publishing until the broker's
// context ends.
func (b *Broker) startRepliers() {
	rs := &repliers{queues: make([]chan reply, max(runtime.GOMAXPROCS(0), 2)), seed: maphash.MakeSeed()}
	for i := range rs.queues {
		rs.queues[i] = make(chan reply, replyQueue)
		rs.wg.Go(func() { b.replier(rs.queues[i]) })
	}
	b.repliers = rs
}

func (b *Broker) replier(queue <-chan reply) {
	for {
		select {
		case r := <-queue:
			if err := b.Publish(b.ctx, r.productID, r.deviceName, ota.NewReportVersionRsp(r.version)); err != nil {
				b.log.Debug("report_version_rsp not sent", "product_id", r.productID, "device", r.deviceName, "err", err)
			}
		case <-b.ctx.Done():
			return
		}
	}
}

// reply queues a report_version_rsp, waiting for room while the broker
// runs.
func (b *Broker) reply(r reply) {
	q := b.repliers.queues[maphash.String(b.repliers.seed, r.deviceName)%uint64(len(b.repliers.queues))]
	select {
	case q <- r:
	case <-b.ctx.Done():
	}
}
